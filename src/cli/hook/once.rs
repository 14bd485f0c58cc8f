//! Telling events with a session (Claude Code's and Codex's `PostToolUse`): each waiting
//! message is announced at most once per session, and the line says how many are new since
//! the last notice.
//!
//! A `PostToolUse` hook runs after every tool call; repeating the same line each time costs
//! the model tokens and attention. So the event's `session_id` (on stdin) names a watcher, as
//! for the waking events ([`super::wait`]), and the broker's `watch` with no wait returns only
//! mail never announced to it, recording what it returns as announced. A waking event of the
//! same session shares that record: whichever hook told the session of a message, no other
//! tells it again. Nothing is consumed. Every failure is silent on stdout, and written to the
//! hook log.

use super::{event, log, HookArgs, HookEvent, HOOK_TIMEOUT};
use crate::client::{Client, ClientError, WatchOptions};
use crate::protocol::schema::WireMessage;
use crate::session_file::SessionFile;

/// The most mail one notice counts (the broker's largest `limit`); the rest is the next one's.
const NOTICE_LIMIT: u32 = 500;

/// The line for mail this session was never told of, or `None` (nothing new, or a failure,
/// which is logged). `None` as well when stdin holds no event: the caller then counts instead.
pub fn new_since_last_notice(args: &HookArgs, event: HookEvent) -> Result<Option<String>, ()> {
    let input = event::read_stdin().map_err(|_| ())?;
    let session = Some(input.session_id.as_str());
    let watcher = event::watcher_for(&input.session_id);
    match announce(args, &watcher) {
        Ok((messages, more, waiting)) => Ok(line(&messages, more, waiting)),
        Err(reason) => {
            log::write(&event.name(), session, &format!("{reason}: nothing said"));
            Ok(None)
        }
    }
}

/// Asks the broker for mail never announced to `watcher` (recording it as announced now), and
/// how much waits in all.
fn announce(args: &HookArgs, watcher: &str) -> Result<(Vec<WireMessage>, bool, u64), String> {
    let session = SessionFile::load().map_err(|e| e.to_string())?;
    let mut client = connect(args).map_err(|e| {
        super::warn_if_refused_ref(&e);
        e.to_string()
    })?;
    let options = WatchOptions {
        watcher: watcher.to_owned(),
        wait: None,
        limit: Some(NOTICE_LIMIT),
        push: false,
    };
    let reply = client
        .watch(&session.session_token, &options)
        .map_err(|e| e.to_string())?;
    if reply.messages.is_empty() {
        return Ok((Vec::new(), false, 0));
    }
    let waiting = client
        .count(&session.session_token)
        .map(|w| w.count)
        .unwrap_or(0);
    Ok((reply.messages, reply.more, waiting.into()))
}

fn connect(args: &HookArgs) -> Result<Client, ClientError> {
    let broker_user = crate::client::BrokerUser::from_env()?;
    let socket = super::super::given_socket(&args.socket);
    let mut client = super::super::connect_to(&args.addr, socket, broker_user, HOOK_TIMEOUT)?;
    // The session token goes only to a broker this client may trust with it.
    client.verify_broker(&super::super::broker_check())?;
    Ok(client)
}

/// `📬 2 new messages since the last notice (from alice, bob; 5 waiting): use the check tool`.
fn line(messages: &[WireMessage], more: bool, waiting: u64) -> Option<String> {
    let new = messages.len();
    let noun = match (new, more) {
        (0, _) => return None,
        (1, false) => "1 new message".to_owned(),
        (n, false) => format!("{n} new messages"),
        (n, true) => format!("{n}+ new messages"),
    };
    let in_all = if waiting > new as u64 {
        format!("; {waiting} waiting")
    } else {
        String::new()
    };
    Some(format!(
        "📬 {noun} since the last notice (from {}{in_all}): use the check tool",
        super::wait::senders(messages)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::hook::tests::mail_from as from;

    #[test]
    fn the_line_counts_the_new_and_the_waiting() {
        assert_eq!(line(&[], false, 3), None);
        assert_eq!(
            line(&from(&["alice"]), false, 1).unwrap(),
            "📬 1 new message since the last notice (from alice): use the check tool"
        );
        assert_eq!(
            line(&from(&["alice", "bob", "alice"]), false, 5).unwrap(),
            "📬 3 new messages since the last notice (from alice, bob; 5 waiting): use the check tool"
        );
    }
}
