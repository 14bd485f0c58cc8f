//! The integration tests: one binary, one module per area, the shared harness in `common`.
//!
//! Each module drives the real thing: a broker on port 0 with a temporary data directory, the
//! real binary as a subprocess, real SQLite files. One binary links once, so changing a test
//! rebuilds one crate instead of one per area.

mod common;

mod ask_and_wait;
mod broker_owner;
mod challenge;
mod channel;
mod cli;
mod cli_delivery;
mod cli_escaping;
mod cli_scripts;
mod cli_takeover;
mod clock_jumps;
mod crash_restart;
mod crash_torture;
mod dashboard;
mod dashboard_browser;
mod database_guard;
mod defects;
mod did_you_mean;
mod floods;
mod golden;
mod gone_readers;
mod history;
mod hook;
mod hostile_input;
mod import_legacy;
mod legacy_protocol;
mod long_poll;
mod manual_ack;
mod mcp;
mod name_claims;
mod other_assistants;
mod plugin;
mod presence;
mod privacy;
mod quotas;
mod receipts;
mod refusals;
mod reply_limits;
mod safe_files;
mod search;
mod secret_mode;
mod serve_process;
mod service_unit;
mod share_tools;
mod smoke;
mod status;
mod storage;
mod thread_action;
mod threads;
mod time_rules;
mod unix_socket;
mod watch;
