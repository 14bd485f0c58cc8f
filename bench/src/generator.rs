//! One run of the load generator: it drives a broker (one it starts, or any address that
//! speaks the protocol) through each workload, measures both echo ceilings over the same kind
//! of connection in the same run, and collects every figure beside them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::dashboard;
use crate::echo::EchoServer;
use crate::latency;
use crate::memory;
use crate::report::{self, Report, Row};
use crate::target::{self, SpawnedBroker, TargetError};
use crate::wire::WireError;
use crate::workloads::{self, Delivery, Instance, Kind, Mailbox, Replies, Run, Target};

/// What to measure and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// Drive this address instead of starting a broker for each workload.
    pub addr: Option<SocketAddr>,
    /// The target broker's pid, to read its memory when it was not started here.
    pub pid: Option<u32>,
    /// The target's shared secret, for register.
    pub secret: Option<String>,
    /// How long each workload (and each ceiling) runs.
    pub duration: Duration,
    /// Idle connections to hold open while reading the broker's memory.
    pub idle_connections: usize,
    /// Also store a million messages, restart on them and drain them (started brokers only).
    pub million: bool,
    /// Also store this many messages between 100 instances and time `search` over them.
    pub search: Option<u64>,
    /// Also store this many messages between 1,000 instances and time the dashboard's pages
    /// (also when `only` selects them).
    pub web: Option<u64>,
    /// Run only the workloads whose names contain this text.
    pub only: Option<String>,
    /// Where started brokers keep their throwaway data directories, and the durable echo its
    /// file: the disk under test.
    pub data_parent: PathBuf,
    /// The `claude-ipc` binary to start brokers from (None with `addr`).
    pub broker_bin: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{workload}: {source}")]
    Wire { workload: String, source: WireError },
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot start the echo server: {0}")]
    Echo(std::io::Error),
    #[error("cannot start the durable echo in {0}: {1}")]
    DurableEcho(PathBuf, std::io::Error),
    #[error("--million needs a broker this run starts (drop --addr): it restarts the broker")]
    MillionNeedsSpawn,
}

/// Runs every workload and prints the report on stdout; progress goes to stderr.
pub fn run(options: &Options) -> Result<Report, BenchError> {
    if options.million && options.addr.is_some() {
        return Err(BenchError::MillionNeedsSpawn);
    }
    // A thousand idle connections, and the clients' own, need more than the usual 1,024.
    let _ = claude_ipc::os::raise_open_file_limit();
    let echo = EchoServer::start().map_err(BenchError::Echo)?;
    let durable = EchoServer::start_durable(&options.data_parent)
        .map_err(|e| BenchError::DurableEcho(options.data_parent.clone(), e))?;
    let mut bench = Bench::new(options, echo.addr, durable.addr);
    bench.all()?;
    Ok(bench.report)
}

/// One run in progress: the options, the ceilings' addresses and the rows measured so far.
struct Bench<'a> {
    options: &'a Options,
    echo: SocketAddr,
    durable_echo: SocketAddr,
    report: Report,
    step: usize,
    /// The broker the current workload runs against, when this run starts them.
    spawned: Option<SpawnedBroker>,
}

/// The dashboard workloads' names (`--only web` picks both).
const WEB_PAGES: &str = "web pages over stored messages";
const WEB_STREAMS: &str = "web streams beside 50 busy agents";

/// How many turns a send workload and its two ceilings take (see [`Bench::in_turns`]).
const TURNS: u32 = 5;

/// How many workloads `all` runs (the million-message run included); progress counts to it.
const STEPS: usize = 15;

/// The messages the dashboard's pages are timed over when `--only` picks them without `--web`.
const WEB_MESSAGES: u64 = 1_000_000;

impl<'a> Bench<'a> {
    fn new(options: &'a Options, echo: SocketAddr, durable_echo: SocketAddr) -> Self {
        Bench {
            options,
            echo,
            durable_echo,
            report: Report::new(options.addr.is_none()),
            step: 0,
            spawned: None,
        }
    }

    fn all(&mut self) -> Result<(), BenchError> {
        self.sends("legacy sends, 1 client", Kind::Legacy, 1)?;
        self.sends("legacy sends, 4 clients", Kind::Legacy, 4)?;
        for clients in [1, 8, 32] {
            let name = format!("persistent sends, {clients} client{}", plural(clients));
            self.sends(&name, Kind::Persistent, clients)?;
        }
        self.mixed(8)?;
        self.check_queued(100)?;
        self.fan_out(50)?;
        self.long_poll()?;
        self.push()?;
        self.idle()?;
        if self.options.million {
            self.million()?;
        } else if self.options.only.is_none() {
            self.pass_over("million-message run", "skipped (pass --million)");
        }
        match self.options.search {
            Some(messages) => self.search(messages)?,
            None if self.options.only.is_none() => {
                self.pass_over("search over stored messages", "skipped (pass --search)")
            }
            None => {}
        }
        self.stream_cost()?;
        let web_selected = self
            .options
            .only
            .as_deref()
            .is_some_and(|only| WEB_PAGES.contains(only));
        match self.options.web {
            Some(messages) => self.web_pages(messages)?,
            None if web_selected => self.web_pages(WEB_MESSAGES)?,
            None if self.options.only.is_none() => {
                self.pass_over(WEB_PAGES, "skipped (pass --web or --only web)")
            }
            None => {}
        }
        Ok(())
    }

    /// Announces the next workload and returns a fresh target for it: a new broker on an
    /// empty data directory, or the given address.
    fn begin(&mut self, name: &str) -> Result<Option<Target>, BenchError> {
        self.begin_with(name, &[])
    }

    /// [`Bench::begin`], with more arguments for a broker this run starts.
    fn begin_with(
        &mut self,
        name: &str,
        serve_args: &[&str],
    ) -> Result<Option<Target>, BenchError> {
        self.step += 1;
        let selected = self
            .options
            .only
            .as_deref()
            .is_none_or(|only| name.contains(only));
        if !selected {
            return Ok(None);
        }
        eprint!("[{:>2}/{STEPS}] {name} ... ", self.step);
        let addr = match self.options.addr {
            Some(addr) => addr,
            None => {
                self.spawned = None;
                let binary = self
                    .options
                    .broker_bin
                    .as_deref()
                    .expect("a run without --addr has its broker binary");
                let label = format!("step{}", self.step);
                let broker =
                    SpawnedBroker::start(binary, &self.options.data_parent, &label, serve_args)?;
                let addr = broker.addr;
                self.spawned = Some(broker);
                addr
            }
        };
        let persistent = target::supports_persistent(addr).map_err(|e| wire_error(name, e))?;
        Ok(Some(Target {
            addr,
            persistent,
            secret: self.options.secret.clone(),
            prefix: format!("bench{}-{}", std::process::id(), self.step),
        }))
    }

    /// Counts a step that does not run.
    fn pass_over(&mut self, name: &str, why: &str) {
        self.step += 1;
        eprintln!("[{:>2}/{STEPS}] {name} ... {why}", self.step);
    }

    fn broker_pid(&self) -> Option<u32> {
        self.spawned
            .as_ref()
            .map(SpawnedBroker::pid)
            .or(self.options.pid)
    }

    fn sends(&mut self, name: &str, kind: Kind, clients: usize) -> Result<(), BenchError> {
        let Some(target) = self.begin(name)? else {
            return Ok(());
        };
        if kind == Kind::Persistent && !target.persistent {
            self.skip(name, "the target closes connections after one request");
            return Ok(());
        }
        let at = |e| wire_error(name, e);
        let senders = workloads::register_many(&target, "sender", clients).map_err(at)?;
        let sink = workloads::register(&target, &format!("{}-sink", target.prefix)).map_err(at)?;
        let work_before = target::store_work(target.addr);
        let [(ceiling, _), (durable, _), (run, sent)] =
            self.in_turns(&target, kind, (&senders, &sink.name), name)?;
        let per_commit = target::jobs_per_commit(work_before, target::store_work(target.addr));
        let drain_started = Instant::now();
        let received = Mailbox::open(&target, &sink)
            .and_then(|mut mailbox| mailbox.drain())
            .map_err(at)?;
        let delivery = Delivery::compare(workloads::expected_contents(&sent), &received);
        let row = Row::new(name, &run, &ceiling)
            .durable_ceiling(&durable)
            .deliveries(workloads::per_second(
                delivery.delivered,
                drain_started.elapsed(),
            ))
            .delivery(delivery)
            .per_commit(per_commit);
        self.finish(row);
        Ok(())
    }

    /// Sends from `senders` to the plain echo, the durable echo and the target in turns,
    /// [`TURNS`] slices of the workload's duration each, so that a slow spell of the shared
    /// machine or its disk falls on all three alike. Returns the three runs in that order, each
    /// with how many messages every sender had acknowledged.
    fn in_turns(
        &self,
        target: &Target,
        kind: Kind,
        to: (&[Instance], &str),
        name: &str,
    ) -> Result<[(Run, Vec<u64>); 3], BenchError> {
        let slice = self.options.duration / TURNS;
        let legs = [
            (self.echo, Replies::Echoed),
            (self.durable_echo, Replies::Echoed),
            (target.addr, Replies::Checked),
        ];
        let mut totals: [(Run, Vec<u64>); 3] = Default::default();
        for _ in 0..TURNS {
            for ((addr, replies), (total, sent)) in legs.iter().zip(totals.iter_mut()) {
                let (run, now_sent) = workloads::sends(*addr, kind, to, slice, *replies, sent)
                    .map_err(|e| wire_error(name, e))?;
                total.extend(run);
                *sent = now_sent;
            }
        }
        Ok(totals)
    }

    fn mixed(&mut self, clients: usize) -> Result<(), BenchError> {
        let name = format!("mixed send+check, {clients} clients");
        let Some(target) = self.begin(&name)? else {
            return Ok(());
        };
        if !target.persistent {
            self.skip(&name, "the target closes connections after one request");
            return Ok(());
        }
        let at = |e| wire_error(&name, e);
        let names = workloads::register_many(&target, "mixed", clients).map_err(at)?;
        let duration = self.options.duration;
        let ceiling_of = |echo| {
            let to = (names.as_slice(), names[0].name.as_str());
            workloads::sends(echo, Kind::Persistent, to, duration, Replies::Echoed, &[])
                .map(|(run, _)| run)
        };
        let ceiling = ceiling_of(self.echo).map_err(at)?;
        let durable = ceiling_of(self.durable_echo).map_err(at)?;
        let work_before = target::store_work(target.addr);
        let (run, mut finished) = workloads::mixed(&target, &names, duration).map_err(at)?;
        let per_commit = target::jobs_per_commit(work_before, target::store_work(target.addr));
        let delivered_during_run: u64 = finished.iter().map(|c| c.received.len() as u64).sum();
        for (client, who) in finished.iter_mut().zip(&names) {
            let rest = Mailbox::open(&target, who)
                .and_then(|mut mailbox| mailbox.drain())
                .map_err(at)?;
            client.received.extend(rest);
        }
        let sent: Vec<u64> = finished.iter().map(|c| c.sent).collect();
        // Contents name their sender, so all the mail read can be matched against all sent.
        let mut received = Vec::new();
        for client in &finished {
            received.extend(client.received.iter().cloned());
        }
        let delivery = Delivery::compare(workloads::expected_contents(&sent), &received);
        let mut send_latency = latency::Samples::default();
        let mut check_latency = latency::Samples::default();
        for client in finished {
            send_latency.merge(client.send_latency);
            check_latency.merge(client.check_latency);
        }
        let row = Row::new(&name, &run, &ceiling)
            .durable_ceiling(&durable)
            .deliveries(workloads::per_second(delivered_during_run, run.elapsed))
            .delivery(delivery)
            .per_commit(per_commit)
            .note(format!(
                "send p99 {}, check p99 {}",
                report::millis(send_latency.summary().p99),
                report::millis(check_latency.summary().p99)
            ));
        self.finish(row);
        Ok(())
    }

    fn check_queued(&mut self, queued: usize) -> Result<(), BenchError> {
        let name = format!("check of {queued} queued messages");
        let Some(target) = self.begin(&name)? else {
            return Ok(());
        };
        let at = |e| wire_error(&name, e);
        let ceiling = self.echo_one_client(&target, &name)?;
        let (samples, short) =
            workloads::check_queued(&target, queued, self.options.duration).map_err(at)?;
        let mut row = Row::latency_only(&name, &samples, &ceiling);
        if short > 0 {
            row = row.note(format!("{short} checks returned fewer than {queued}"));
        }
        self.report.check_queued_p99 = Some(samples.summary().p99);
        self.finish(row);
        Ok(())
    }

    fn fan_out(&mut self, receivers: usize) -> Result<(), BenchError> {
        let name = format!("broadcast to {receivers} instances");
        let Some(target) = self.begin(&name)? else {
            return Ok(());
        };
        let at = |e| wire_error(&name, e);
        let ceiling = self.echo_one_client(&target, &name)?;
        let fan = workloads::fan_out(&target, receivers, self.options.duration).map_err(at)?;
        let delivery = Delivery {
            expected: fan.expected_deliveries,
            delivered: fan.deliveries,
            missing: fan.expected_deliveries.saturating_sub(fan.deliveries),
            duplicated: fan.deliveries.saturating_sub(fan.expected_deliveries),
        };
        let mut row = Row::new(&name, &fan.broadcasts, &ceiling)
            .deliveries(workloads::per_second(fan.deliveries, fan.delivery_elapsed))
            .delivery(delivery);
        let spread = fan.delivery_latency.summary();
        row = row.note(format!(
            "broadcast->receiver p50 {}, p99 {}",
            report::millis(spread.p50),
            report::millis(spread.p99)
        ));
        self.finish(row);
        Ok(())
    }

    fn long_poll(&mut self) -> Result<(), BenchError> {
        let name = "long-poll wake-up";
        let Some(target) = self.begin(name)? else {
            return Ok(());
        };
        let ceiling = self.echo_one_client(&target, name)?;
        let wakeups = workloads::long_poll(&target, self.options.duration)
            .map_err(|e| wire_error(name, e))?;
        let full = wakeups.send_to_reply.summary();
        let row = Row::latency_only(name, &wakeups.ack_to_reply, &ceiling).note(format!(
            "from the sender's ack; from its send: p50 {}, p99 {}",
            report::millis(full.p50),
            report::millis(full.p99)
        ));
        self.report.wake_p99 = Some(wakeups.ack_to_reply.summary().p99);
        self.finish(row);
        Ok(())
    }

    fn push(&mut self) -> Result<(), BenchError> {
        let name = "channel push";
        let Some(target) = self.begin(name)? else {
            return Ok(());
        };
        let Some(binary) = self.options.broker_bin.clone() else {
            // Push is the MCP server's work; a run against --addr has no binary to start it.
            self.skip(
                name,
                "needs the claude-ipc binary to start `mcp --channel` (drop --addr)",
            );
            return Ok(());
        };
        let ceiling = self.echo_one_client(&target, name)?;
        let data_dir = self.spawned.as_ref().map(|b| b.data_dir().to_owned());
        let pushes =
            crate::push::push_latency(&target, &binary, data_dir.as_deref(), self.options.duration)
                .map_err(|e| wire_error(name, e))?;
        let row = Row::latency_only(name, &pushes.ack_to_push, &ceiling)
            .delivery(pushes.delivery)
            .note(
                "from the sender's ack to the notification line on the MCP server's stdout".into(),
            );
        self.report.push_p99 = Some(pushes.ack_to_push.summary().p99);
        self.finish(row);
        Ok(())
    }

    fn idle(&mut self) -> Result<(), BenchError> {
        let name = format!("{} idle connections", self.options.idle_connections);
        let Some(target) = self.begin(&name)? else {
            return Ok(());
        };
        let idle =
            memory::idle_connections(&target, self.options.idle_connections, self.broker_pid())
                .map_err(|e| wire_error(&name, e))?;
        let outcome = idle.describe();
        self.report.idle = Some(idle);
        eprintln!("{outcome}");
        Ok(())
    }

    fn search(&mut self, messages: u64) -> Result<(), BenchError> {
        let name = "search over stored messages";
        let Some(target) = self.begin(name)? else {
            return Ok(());
        };
        let ceiling = self.echo_one_client(&target, name)?;
        let data_dir = self.spawned.as_ref().map(|b| b.data_dir().to_owned());
        let figures = crate::search::search(&target, messages, data_dir.as_deref())
            .map_err(|e| wire_error(name, e))?;
        eprintln!("{}", figures.describe());
        for query in &figures.queries {
            let more = if query.more { ", more" } else { "" };
            let row =
                Row::latency_only(&format!("search: {}", query.kind), &query.latency, &ceiling)
                    .note(format!(
                        "`{}`: {} results{more}",
                        query.query, query.results
                    ));
            self.report.rows.push(row);
        }
        self.report.search = Some(figures);
        Ok(())
    }

    fn million(&mut self) -> Result<(), BenchError> {
        let name = "million-message run";
        let Some(target) = self.begin(name)? else {
            return Ok(());
        };
        let broker = self
            .spawned
            .as_mut()
            .expect("--million always starts its broker");
        let run = memory::million(&target, broker).map_err(|e| match e {
            memory::MillionError::Wire(e) => wire_error(name, e),
            memory::MillionError::Target(e) => BenchError::Target(e),
        })?;
        eprintln!("{}", run.describe());
        self.report.million = Some(run);
        Ok(())
    }

    /// Logs in to the dashboard of the broker this run started for the current workload.
    fn dashboard_login(&self, name: &str) -> Result<Option<dashboard::Login>, BenchError> {
        let Some(broker) = &self.spawned else {
            return Ok(None);
        };
        dashboard::log_in(broker.binary(), broker.data_dir())
            .map(Some)
            .map_err(|e| wire_error(name, e))
    }

    fn web_pages(&mut self, messages: u64) -> Result<(), BenchError> {
        let name = WEB_PAGES;
        let Some(target) = self.begin_with(name, &dashboard::SERVE_WEB)? else {
            return Ok(());
        };
        let Some(login) = self.dashboard_login(name)? else {
            self.skip(
                name,
                "needs a broker this run starts with --web (drop --addr)",
            );
            return Ok(());
        };
        let ceiling = self.echo_one_client(&target, name)?;
        let figures =
            dashboard::pages(&target, &login, messages).map_err(|e| wire_error(name, e))?;
        eprintln!("{}", figures.describe());
        for page in &figures.pages {
            let row = Row::latency_only(&format!("web: {}", page.page), &page.latency, &ceiling)
                .note(page_note(page));
            self.report.rows.push(row);
        }
        self.report.web = Some(figures);
        Ok(())
    }

    fn stream_cost(&mut self) -> Result<(), BenchError> {
        let name = WEB_STREAMS;
        let Some(target) = self.begin_with(name, &dashboard::SERVE_WEB)? else {
            return Ok(());
        };
        let Some(login) = self.dashboard_login(name)? else {
            self.skip(
                name,
                "needs a broker this run starts with --web (drop --addr)",
            );
            return Ok(());
        };
        let round = self.options.duration;
        let ceiling = self.echo_clients(dashboard::BUSY_AGENTS, name)?;
        let cost =
            dashboard::stream_cost(&target, &login, round).map_err(|e| wire_error(name, e))?;
        let row = |workload: &str, run: &workloads::Run| Row::new(workload, run, &ceiling);
        self.report
            .rows
            .push(row("web: 50 busy agents, no stream", &cost.without));
        let with = row("web: 50 busy agents, 5 streams", &cost.with)
            .delivery(cost.delivery)
            .note(cost.describe());
        self.finish(with);
        self.report.stream_cost = Some(cost);
        Ok(())
    }

    /// The echo ceiling for `clients` persistent clients, as many as a workload drives.
    fn echo_clients(&self, clients: usize, name: &str) -> Result<Run, BenchError> {
        let nobody: Vec<Instance> = (0..clients)
            .map(|i| Instance {
                name: format!("ceiling-{i}"),
                token: "ceiling".into(),
            })
            .collect();
        let to = (nobody.as_slice(), "ceiling");
        let (ceiling, _) = workloads::sends(
            self.echo,
            Kind::Persistent,
            to,
            self.options.duration,
            Replies::Echoed,
            &[],
        )
        .map_err(|e| wire_error(name, e))?;
        Ok(ceiling)
    }

    /// The echo ceiling for one client over the connection kind the target supports.
    fn echo_one_client(&self, target: &Target, name: &str) -> Result<Run, BenchError> {
        let nobody = [Instance {
            name: "ceiling".into(),
            token: "ceiling".into(),
        }];
        let kind = if target.persistent {
            Kind::Persistent
        } else {
            Kind::Legacy
        };
        let to = (nobody.as_slice(), "ceiling");
        let (ceiling, _) = workloads::sends(
            self.echo,
            kind,
            to,
            self.options.duration,
            Replies::Echoed,
            &[],
        )
        .map_err(|e| wire_error(name, e))?;
        Ok(ceiling)
    }

    fn skip(&mut self, name: &str, why: &str) {
        eprintln!("skipped: {why}");
        self.report.rows.push(Row::skipped(name, why));
    }

    fn finish(&mut self, row: Row) {
        eprintln!("{}", row.progress_line());
        self.report.rows.push(row);
    }
}

/// Where a timed dashboard page is and how it was reached.
fn page_note(page: &dashboard::PageFigures) -> String {
    let depth = match (page.depth, page.ended_early) {
        (0, _) => String::new(),
        (depth, false) => format!(", {depth} next links deep"),
        (depth, true) => format!(", only {depth} next links deep: the list ENDED there"),
    };
    format!("{} ({} bytes{depth})", page.path, page.bytes)
}

fn wire_error(workload: &str, source: WireError) -> BenchError {
    BenchError::Wire {
        workload: workload.to_owned(),
        source,
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}
