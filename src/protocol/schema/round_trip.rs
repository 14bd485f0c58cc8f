//! Every request and reply type serializes and reads back as itself, and every action has a
//! sample of each: a new action, or a new reply, fails here until it is listed.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::requests::*;
use super::*;
use crate::domain::{MessageId, MessageKind, Timestamp};
use crate::protocol::{ErrorCode, Reply, Request, ACTION_NAMES};

/// A name or time as a reply reports it: text.
fn name(text: &str) -> String {
    text.to_owned()
}

fn at(text: &str) -> String {
    text.to_owned()
}

fn token() -> String {
    "R5tCJJaVT-11qJ-H0M854PUUU-jdlLh0GC9u0QKFuYY".to_owned()
}

fn body() -> WireBody {
    let data = json!({"files": ["src/api.rs"], "priority": "high"});
    WireBody {
        content: "The API changed".to_owned(),
        data: data.as_object().cloned(),
    }
}

fn request_body() -> RequestBody {
    RequestBody {
        content: "The API changed".to_owned(),
        data: Some(json!({"files": ["src/api.rs"]})),
    }
}

/// One request per action, each with its optional fields set where it has any.
fn requests() -> Vec<ClientRequest> {
    let stamp = RequestStamp {
        nonce: Some("n-1".into()),
        timestamp: Timestamp::parse("2026-11-24T21:07:44.000Z"),
    };
    vec![
        ClientRequest::Ping,
        ClientRequest::Challenge(ChallengeRequest {
            instance_id: "alice".into(),
            client_nonce: "ab".repeat(32),
        }),
        ClientRequest::Register(RegisterRequest {
            instance_id: "alice".into(),
            challenge_id: Some("c-1".into()),
            auth_proof: Some("cd".repeat(32)),
            takeover: Some(false),
            session_token: Some(token()),
            ..RegisterRequest::default()
        }),
        ClientRequest::Send(SendRequest {
            session_token: token(),
            to_id: "bob".into(),
            message: request_body(),
            stamp: stamp.clone(),
            thread: ThreadingFields {
                reply_to: Some(41),
                subject: Some("the API".into()),
            },
        }),
        ClientRequest::Broadcast(BroadcastRequest {
            session_token: token(),
            message: request_body(),
            stamp,
            thread: ThreadingFields::default(),
        }),
        ClientRequest::Check(CheckRequest {
            session_token: token(),
            ack: Some(ManualAck::Manual),
            lease_ms: Some(30_000),
            limit: Some(2),
            wait_ms: Some(1_000),
            reply_to: Some(41),
        }),
        ClientRequest::Ack(AckRequest {
            session_token: token(),
            ids: vec![1, 999],
            release: true,
        }),
        ClientRequest::List(ListRequest {
            session_token: token(),
            after: Some("bob".into()),
            limit: Some(2),
        }),
        ClientRequest::Rename(RenameRequest {
            session_token: token(),
            new_id: "robert".into(),
        }),
        ClientRequest::Count(CountRequest {
            session_token: token(),
            wait_ms: Some(5_000),
        }),
        ClientRequest::Logout(LogoutRequest {
            session_token: token(),
        }),
        ClientRequest::Watch(WatchRequest {
            session_token: token(),
            watcher: "5b1f0c3e-claude-session".into(),
            wait_ms: Some(30_000),
            limit: Some(50),
            push: true,
        }),
        ClientRequest::Sent(SentRequest {
            session_token: token(),
            limit: None,
            ids: Some(vec![3, 999]),
        }),
        ClientRequest::Thread(ThreadRequest {
            session_token: token(),
            thread_id: 41,
            limit: Some(10),
            cursor: Some(
                crate::protocol::thread_cursor::ThreadCursor {
                    thread_id: MessageId(41),
                    after: MessageId(57),
                }
                .encode(),
            ),
        }),
        ClientRequest::History(HistoryRequest {
            session_token: token(),
            with: Some("bob".into()),
            limit: Some(2),
            cursor: Some("h41".into()),
            before: Timestamp::parse("2026-11-24T21:07:44.000Z"),
        }),
        ClientRequest::Search(SearchRequest {
            session_token: token(),
            query: "\"rate limit\" OR throttl*".into(),
            from: Some(name("alice")),
            to: None,
            thread_id: Some(5),
            since: Some(at("2026-01-01T00:00:00Z")),
            limit: Some(10),
            cursor: Some("rank:20".into()),
        }),
    ]
}

/// One message as `history`, `thread` and `search` show it: a reply the caller received.
fn conversation_message() -> ConversationMessage {
    ConversationMessage {
        id: MessageId(7),
        from: name("alice"),
        to: name("robert"),
        addressed_to: name("bob"),
        kind: MessageKind::Direct,
        timestamp: at("2026-01-01T12:00:00.000Z"),
        message: body(),
        thread_id: MessageId(5),
        reply_to: Some(MessageId(6)),
        subject: Some("the API".into()),
        direction: Direction::Received,
        peer: Some(name("alicia")),
        state: ReceiptState::Waiting,
    }
}

fn message() -> WireMessage {
    WireMessage {
        id: MessageId(7),
        from: name("alice"),
        to: name("bob"),
        addressed_to: name("bobby"),
        kind: MessageKind::Direct,
        timestamp: at("2026-01-01T12:00:00.000Z"),
        message: body(),
        nonce: Some("n-1".into()),
        sender_timestamp: Some(at("2026-01-01T12:00:30.000Z")),
        delivery_count: 2,
        thread_id: Some(MessageId(5)),
        reply_to: Some(MessageId(6)),
        subject: Some("the API".into()),
    }
}

/// Samples of every reply, with the action each answers; errors answer any action.
fn replies() -> Vec<(&'static str, Reply)> {
    let ping = PingReply {
        refusal: None,
        database: "ok".into(),
        version: "0.1.0".into(),
        protocol: 1,
        mode: Some(SecurityMode::Secret),
        pid: 4242,
        started_at: Some(at("2026-01-01T12:00:00.000Z")),
        uptime_seconds: 5,
        clock: Some(ClockReport {
            broker: at("2026-01-01T12:00:05.000Z"),
            wall: at("2026-01-01T12:00:06.000Z"),
            wall_ahead_ms: 1000,
        }),
        store: Some(StoreWork {
            jobs: 10,
            commits: 4,
        }),
        data_dir: Some("/home/alice/.claude-ipc".into()),
        socket: Some("/home/alice/.claude-ipc/broker.sock".into()),
        static_token: Some(StaticToken::Refused),
        web: Some("http://127.0.0.1:9877/".into()),
    };
    let gone = PingReply {
        refusal: Some(PingRefusal {
            code: ErrorCode::DatabaseGone,
            message: "the database is gone".into(),
        }),
        database: "gone".into(),
        ..ping.clone()
    };
    let replaced = ErrorReply {
        hint: Some("this session was replaced".into()),
        replaced_at: Some(at("2026-01-01T12:00:00.000Z")),
        ..ErrorReply::new(
            ErrorCode::SessionReplaced,
            "Invalid or missing session token",
        )
    };
    let sent = SendReply {
        message: "Message sent".into(),
        message_id: MessageId(3),
        thread_id: Some(MessageId(3)),
        recipient: Some(name("bob")),
        duplicate: false,
        recipient_online: Some(false),
        recipient_last_seen: Some(at("2026-01-01T09:00:00.000Z")),
        did_you_mean: None,
    };
    let near_miss = SendReply {
        message: "Message queued for bbo (not yet registered)".into(),
        message_id: MessageId(4),
        thread_id: None,
        recipient: Some(name("bbo")),
        duplicate: false,
        recipient_online: Some(false),
        recipient_last_seen: None,
        did_you_mean: Some(name("bob")),
    };
    let copies = BroadcastCopies {
        message: "Broadcast to 2 instances".into(),
        count: 2,
        message_ids: vec![MessageId(1), MessageId(2)],
        skipped_count: 1,
        skipped: vec![name("carol")],
        truncated: false,
        first_id: Some(MessageId(1)),
        last_id: Some(MessageId(2)),
        thread_id: Some(MessageId(1)),
    };
    vec![
        ("ping", ping.into()),
        ("ping", gone.into()),
        (
            "challenge",
            ChallengeReply {
                challenge_id: "c-1".into(),
                server_nonce: "ef".repeat(32),
                server_proof: "01".repeat(32),
                client_uid: Some("1000".into()),
                expires_in_ms: 30_000,
            }
            .into(),
        ),
        (
            "register",
            RegisterReply {
                session_token: token(),
                message: "Registered alice with 3 queued messages".into(),
                instance_id: name("alice"),
                queued: 3,
            }
            .into(),
        ),
        ("send", sent.into()),
        ("send", SendReply::duplicate(MessageId(3)).into()),
        ("send", near_miss.into()),
        ("broadcast", BroadcastReply::Delivered(copies).into()),
        (
            "broadcast",
            BroadcastReply::Duplicate(SendReply::duplicate(MessageId(1))).into(),
        ),
        (
            "check",
            CheckReply {
                messages: vec![message()],
                more: true,
                ack: Some(ManualAck::Manual),
                lease_until: Some(at("2026-01-01T12:00:30.000Z")),
            }
            .into(),
        ),
        (
            "ack",
            AckReply {
                acked: 1,
                already_acked_count: 1,
                already_acked: vec![MessageId(1)],
                refused_count: 1,
                refused: vec![RefusedId::unknown_message(MessageId(999))],
                truncated: true,
            }
            .into(),
        ),
        (
            "ack",
            ReleaseReply {
                released: 1,
                already_acked_count: 1,
                already_acked: vec![MessageId(1)],
                refused_count: 1,
                refused: vec![RefusedId::unknown_message(MessageId(999))],
                truncated: true,
            }
            .into(),
        ),
        (
            "list",
            ListReply {
                instances: vec![InstanceEntry {
                    id: name("alice"),
                    last_seen: at("2026-01-01T12:00:00.000Z"),
                    online: true,
                    push: true,
                }],
                more: true,
                next_after: Some(name("alice")),
            }
            .into(),
        ),
        (
            "rename",
            RenameReply {
                message: "Renamed alice to robert".into(),
                old_id: name("alice"),
                new_id: name("robert"),
            }
            .into(),
        ),
        (
            "count",
            CountReply {
                count: 2,
                senders: vec![name("alice")],
            }
            .into(),
        ),
        (
            "logout",
            LogoutReply {
                message: "Logged out alice".into(),
                instance_id: name("alice"),
            }
            .into(),
        ),
        (
            "watch",
            WatchReply {
                messages: vec![message()],
                more: true,
                replaced: false,
            }
            .into(),
        ),
        (
            "watch",
            WatchReply {
                messages: vec![],
                more: false,
                replaced: true,
            }
            .into(),
        ),
        (
            "sent",
            SentReply {
                messages: vec![
                    Receipt {
                        id: MessageId(3),
                        to: name("robert"),
                        addressed_to: name("bob"),
                        kind: MessageKind::Direct,
                        state: ReceiptState::Delivered,
                        delivery_count: 1,
                        sent_at: at("2026-01-01T12:00:00.000Z"),
                        read_at: Some(at("2026-01-01T12:00:01.000Z")),
                        pushed_at: Some(at("2026-01-01T12:00:00.050Z")),
                        delivered_at: Some(at("2026-01-01T12:00:02.000Z")),
                        expired_at: None,
                    },
                    Receipt {
                        id: MessageId(2),
                        to: name("nobody"),
                        addressed_to: name("nobody"),
                        kind: MessageKind::Broadcast,
                        state: ReceiptState::Expired,
                        delivery_count: 0,
                        sent_at: at("2026-01-01T12:00:00.000Z"),
                        read_at: None,
                        pushed_at: None,
                        delivered_at: None,
                        expired_at: Some(at("2026-01-08T12:00:00.000Z")),
                    },
                ],
                more: true,
                refused_count: 1,
                refused: vec![RefusedId::not_sent_by_you(MessageId(999))],
            }
            .into(),
        ),
        (
            "thread",
            ThreadReply {
                thread_id: MessageId(41),
                subject: Some("the API".into()),
                messages: vec![ConversationMessage {
                    id: MessageId(57),
                    from: name("bob"),
                    to: name("alice"),
                    addressed_to: name("alice"),
                    kind: MessageKind::Direct,
                    timestamp: at("2026-01-01T12:00:00.000Z"),
                    message: body(),
                    thread_id: MessageId(41),
                    reply_to: Some(MessageId(41)),
                    subject: Some("the API".into()),
                    direction: Direction::Received,
                    peer: Some(name("alice")),
                    state: ReceiptState::Delivered,
                }],
                more: true,
                next_cursor: Some("dGhyZWFkOjQxOjU3".into()),
            }
            .into(),
        ),
        (
            "history",
            HistoryReply {
                messages: vec![conversation_message()],
                more: true,
                next_cursor: Some("h7".into()),
            }
            .into(),
        ),
        (
            "history",
            HistoryReply {
                messages: vec![],
                more: false,
                next_cursor: None,
            }
            .into(),
        ),
        (
            "search",
            SearchReply {
                results: vec![SearchResult {
                    message: ConversationMessage {
                        id: MessageId(7),
                        from: name("alice"),
                        to: name("bob"),
                        addressed_to: name("bob"),
                        kind: MessageKind::Direct,
                        timestamp: at("2026-01-01T12:00:00.000Z"),
                        message: body(),
                        thread_id: MessageId(5),
                        reply_to: Some(MessageId(6)),
                        subject: Some("the API".into()),
                        direction: Direction::Received,
                        peer: Some(name("alice")),
                        state: ReceiptState::Delivered,
                    },
                    snippet: "the [rate] [limit] is…".into(),
                    rank: 21,
                }],
                more: true,
                next_cursor: Some("rank:21".into()),
                capped: true,
            }
            .into(),
        ),
        ("any", replaced.into()),
    ]
}

/// `value` as JSON, and the same JSON read back, is `value`.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T, line: &[u8]) {
    let text = serde_json::to_string(value).unwrap();
    assert_eq!(&serde_json::from_str::<T>(&text).unwrap(), value, "{text}");
    let from_line: T = serde_json::from_slice(line)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
    assert_eq!(&from_line, value, "{}", String::from_utf8_lossy(line));
}

/// Reads the reply's own line back as its type. The match has no wildcard, so a new reply
/// type is a compile error here until it is round-tripped.
fn reply_round_trips(reply: &Reply) {
    let line = reply.to_line();
    match reply {
        Reply::Ping(inner) => round_trips(inner.as_ref(), &line),
        Reply::Challenge(inner) => round_trips(inner, &line),
        Reply::Register(inner) => round_trips(inner, &line),
        Reply::Send(inner) => round_trips(inner, &line),
        Reply::Broadcast(inner) => round_trips(inner, &line),
        Reply::Check(inner) => round_trips(inner, &line),
        Reply::Ack(inner) => round_trips(inner, &line),
        Reply::Release(inner) => round_trips(inner, &line),
        Reply::List(inner) => round_trips(inner, &line),
        Reply::Rename(inner) => round_trips(inner, &line),
        Reply::Count(inner) => round_trips(inner, &line),
        Reply::Logout(inner) => round_trips(inner, &line),
        Reply::Watch(inner) => round_trips(inner, &line),
        Reply::Sent(inner) => round_trips(inner, &line),
        Reply::Thread(inner) => round_trips(inner, &line),
        Reply::History(inner) => round_trips(inner, &line),
        Reply::Search(inner) => round_trips(inner, &line),
        Reply::Error(inner) => round_trips(inner, &line),
    }
}

#[test]
fn every_request_round_trips_and_the_broker_parses_it_as_its_action() {
    let requests = requests();
    let actions: Vec<&str> = requests.iter().map(ClientRequest::action).collect();
    assert_eq!(actions, ACTION_NAMES, "one sample request per action");
    for request in &requests {
        let line = request.to_line();
        round_trips(request, &line);
        let parsed = Request::parse(&line[..line.len() - 1])
            .unwrap_or_else(|e| panic!("{}: {e:?}", request.action()));
        assert_eq!(parsed.action.name(), request.action());
    }
}

#[test]
fn every_reply_round_trips_from_its_line() {
    let replies = replies();
    for action in ACTION_NAMES {
        assert!(
            replies.iter().any(|(answers, _)| answers == &action),
            "no sample reply for `{action}`"
        );
    }
    for (_, reply) in &replies {
        reply_round_trips(reply);
    }
}

#[test]
fn status_says_ok_or_error_and_keys_are_in_order() {
    let duplicate = Reply::from(SendReply::duplicate(MessageId(3))).to_line();
    assert_eq!(
        String::from_utf8(duplicate).unwrap(),
        "{\"duplicate\":true,\"message\":\"Duplicate nonce: already stored\",\"message_id\":3,\"status\":\"ok\"}\n"
    );
    for (_, reply) in replies() {
        let line: serde_json::Value = serde_json::from_slice(&reply.to_line()).unwrap();
        let status = if reply.is_ok() { "ok" } else { "error" };
        assert_eq!(line["status"], status, "{line}");
    }
}
