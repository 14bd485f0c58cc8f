//! [`Reply`]: what the broker writes back, one typed reply per action (see [`super::schema`]),
//! serialized as one line with its `status`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ErrorCode;

use super::schema::{
    AckReply, BroadcastReply, ChallengeReply, CheckReply, CountReply, ErrorReply, HistoryReply,
    ListReply, LogoutReply, PingReply, RegisterReply, ReleaseReply, RenameReply, SearchReply,
    SendReply, SentReply, ThreadReply, WatchReply,
};

/// Declares [`Reply`] with one variant per reply type, its `From` conversions, and the map of
/// a reply's fields, from one list.
macro_rules! replies {
    ($($variant:ident($type:ty)),* $(,)?) => {
        /// One reply to one request.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Reply {
            /// Boxed: it is several times larger than any other reply.
            Ping(Box<PingReply>),
            $($variant($type),)*
        }

        impl From<PingReply> for Reply {
            fn from(reply: PingReply) -> Self {
                Reply::Ping(Box::new(reply))
            }
        }

        $(impl From<$type> for Reply {
            fn from(reply: $type) -> Self {
                Reply::$variant(reply)
            }
        })*

        impl Reply {
            /// The reply's own fields, without `status`, as a sorted map.
            fn fields(&self) -> Map<String, Value> {
                match self {
                    Reply::Ping(reply) => fields_of(reply.as_ref()),
                    $(Reply::$variant(reply) => fields_of(reply),)*
                }
            }
        }
    };
}

replies!(
    Challenge(ChallengeReply),
    Register(RegisterReply),
    Send(SendReply),
    Broadcast(BroadcastReply),
    Check(CheckReply),
    Ack(AckReply),
    Release(ReleaseReply),
    List(ListReply),
    Rename(RenameReply),
    Count(CountReply),
    Logout(LogoutReply),
    Watch(WatchReply),
    Sent(SentReply),
    Thread(ThreadReply),
    History(HistoryReply),
    Search(SearchReply),
    Error(ErrorReply),
);

impl Reply {
    /// `{"status": "error", "code": ..., "message": ...}`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error(ErrorReply::new(code, message))
    }

    pub fn is_ok(&self) -> bool {
        match self {
            Reply::Error(_) => false,
            Reply::Ping(ping) => ping.refusal.is_none(),
            _ => true,
        }
    }

    /// The reply as written on the wire: one JSON object and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(&self.to_json()).expect("a JSON map always serializes");
        bytes.push(b'\n');
        bytes
    }

    /// The reply as the JSON object written on the wire, `status` included (for `--json`
    /// output that shows the whole reply).
    ///
    /// Its keys are in alphabetical order, as the broker has always written them (a
    /// `serde_json::Map` keeps its keys sorted): built through a `Map` here, in this one
    /// place, so no reply type has to declare its fields in that order.
    pub fn to_json(&self) -> Value {
        let mut fields = self.fields();
        let status = if self.is_ok() { "ok" } else { "error" };
        fields.insert("status".into(), status.into());
        Value::Object(fields)
    }
}

/// Reads one reply line as what a client expects: `T` if its `status` is `ok`, the
/// [`ErrorReply`] if not.
pub fn parse_reply<T: DeserializeOwned>(line: &[u8]) -> serde_json::Result<Result<T, ErrorReply>> {
    #[derive(Deserialize)]
    struct Status {
        #[serde(default)]
        status: String,
    }
    let Status { status } = serde_json::from_slice(line)?;
    Ok(match status.as_str() {
        "ok" => Ok(serde_json::from_slice(line)?),
        _ => Err(serde_json::from_slice(line)?),
    })
}

/// A reply struct's fields as a sorted map.
fn fields_of(reply: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(reply).expect("a reply always serializes") {
        Value::Object(fields) => fields,
        other => unreachable!("a reply serializes to an object, not {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_status_code_and_message_on_one_line_in_key_order() {
        let line = Reply::error(
            ErrorCode::InvalidSession,
            "Invalid or missing session token",
        )
        .to_line();
        assert_eq!(
            line,
            b"{\"code\":\"invalid_session\",\"message\":\"Invalid or missing session token\",\"status\":\"error\"}\n"
        );
    }
}
