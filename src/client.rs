//! A typed, blocking client for the broker's protocol, used by the CLI and the tests.
//!
//! It keeps one persistent connection and sends one JSON request per line.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::broker::session::expected_auth_token;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no broker at {addr} ({reason}); start one with `claude-ipc serve`")]
    Unreachable { addr: String, reason: String },
    #[error("connection to the broker failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker sent something that is not a reply: {0}")]
    Protocol(String),
    #[error("{message} [{code}]")]
    Broker { code: String, message: String },
}

/// A connection to a broker.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// `register`'s reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    pub session_token: String,
    pub message: String,
    #[serde(default)]
    pub queued: u32,
}

/// `send`'s reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Sent {
    pub message: String,
    pub message_id: i64,
    #[serde(default)]
    pub duplicate: bool,
}

/// One message as `check` returns it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Received {
    pub id: i64,
    pub from: String,
    pub to: String,
    pub timestamp: String,
    pub message: Body,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub sender_timestamp: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Body {
    pub content: String,
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
}

/// `check`'s reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Checked {
    pub messages: Vec<Received>,
    #[serde(default)]
    pub more: bool,
}

/// `count`'s reply: waiting mail, not consumed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Waiting {
    pub count: u32,
    /// Distinct senders, by their oldest waiting message; at most ten.
    pub senders: Vec<String>,
}

/// One entry of `list`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Instance {
    pub id: String,
    pub last_seen: String,
}

impl Client {
    /// Connects to `addr` (`host:port`), waiting at most `timeout` for each step.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let target = addr
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("the address resolves to nothing".into()))?;
        let stream =
            TcpStream::connect_timeout(&target, timeout).map_err(|e| unreachable(e.to_string()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Changes how long each later request may wait for the broker (say, for a long poll).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))?;
        Ok(())
    }

    /// Sends any request and returns the reply as JSON, whatever its status.
    pub fn request(&mut self, request: &Value) -> Result<Value, ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(ClientError::Protocol(
                "the broker closed the connection".into(),
            ));
        }
        serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(format!("{e}: {reply}")))
    }

    /// Sends a request; an error reply becomes [`ClientError::Broker`].
    pub fn call(&mut self, request: &Value) -> Result<Value, ClientError> {
        let reply = self.request(request)?;
        if reply["status"] == "ok" {
            return Ok(reply);
        }
        Err(ClientError::Broker {
            code: reply["code"].as_str().unwrap_or("unknown").to_owned(),
            message: reply["message"]
                .as_str()
                .unwrap_or("(no message)")
                .to_owned(),
        })
    }

    fn call_as<T: for<'de> Deserialize<'de>>(&mut self, request: &Value) -> Result<T, ClientError> {
        let reply = self.call(request)?;
        serde_json::from_value(reply.clone())
            .map_err(|e| ClientError::Protocol(format!("{e}: {reply}")))
    }

    pub fn ping(&mut self) -> Result<Value, ClientError> {
        self.call(&json!({"action": "ping"}))
    }

    /// Registers `name`, computing the auth token from `secret` when one is given.
    pub fn register(
        &mut self,
        name: &str,
        secret: Option<&str>,
    ) -> Result<Registered, ClientError> {
        let auth_token = secret
            .map(|s| expected_auth_token(name, s))
            .unwrap_or_default();
        self.call_as(&json!({"action": "register", "instance_id": name, "auth_token": auth_token}))
    }

    /// Sends `content` (and optional `data`) to `to`. `nonce` makes a retry safe.
    pub fn send(
        &mut self,
        token: &str,
        to: &str,
        content: &str,
        data: Option<Value>,
        nonce: Option<&str>,
    ) -> Result<Sent, ClientError> {
        let mut request = json!({
            "action": "send", "session_token": token, "to_id": to,
            "message": {"content": content},
        });
        if let Some(data) = data {
            request["message"]["data"] = data;
        }
        if let Some(nonce) = nonce {
            request["nonce"] = nonce.into();
        }
        self.call_as(&request)
    }

    pub fn broadcast(&mut self, token: &str, content: &str) -> Result<Value, ClientError> {
        self.call(&json!({
            "action": "broadcast", "session_token": token, "message": {"content": content},
        }))
    }

    pub fn check(&mut self, token: &str) -> Result<Checked, ClientError> {
        self.call_as(&json!({"action": "check", "session_token": token}))
    }

    pub fn list(&mut self, token: &str) -> Result<Vec<Instance>, ClientError> {
        let reply = self.call(&json!({"action": "list", "session_token": token}))?;
        serde_json::from_value(reply["instances"].clone())
            .map_err(|e| ClientError::Protocol(format!("{e}: {reply}")))
    }

    pub fn rename(&mut self, token: &str, new_name: &str) -> Result<Value, ClientError> {
        self.call(&json!({"action": "rename", "session_token": token, "new_id": new_name}))
    }

    /// How much mail is waiting and from whom, without consuming any.
    pub fn count(&mut self, token: &str) -> Result<Waiting, ClientError> {
        self.call_as(&json!({"action": "count", "session_token": token}))
    }
}
