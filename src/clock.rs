//! Time for the broker: the wall clock, a count of real elapsed time that no clock step can
//! move, and the broker clock built from the two, all injectable so tests can jump the wall
//! clock or let time pass instead of sleeping.
//!
//! Every stored time is UTC text in one fixed-width ISO-8601 form, so that SQLite compares
//! times as strings correctly and an operator can read them in the `sqlite3` shell.
//!
//! Why a broker clock: the wall clock can jump (an operator's `date -s`, an NTP step, a
//! resumed virtual machine, a time-faking library). If the rules ran on it, a jump of eight
//! days forward would expire every session and every week-old message at the next sweep, and
//! a jump back would stretch every window (rate limit, cooldown) by the jump. The broker's
//! rules instead run on [`BrokerClock`]: a time that advances with real elapsed time since an
//! anchor. The anchor is persisted, so a restart within the same boot resumes where the last
//! run left off plus the real time between; see [`BrokerClock::resume`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, SecondsFormat, Utc};

/// A source of the current time: what the wall clock says, and how long since boot.
#[derive(Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Clone)]
enum Source {
    System,
    /// A clock that only moves when a test says so. A std `Mutex` is fine: it is never held
    /// across an `.await`.
    Manual(Arc<Mutex<ManualTime>>),
}

struct ManualTime {
    wall: DateTime<Utc>,
    since_boot: Duration,
    boot_id: String,
}

/// Where real elapsed time is counted from: one boot of the machine, and how far into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTime {
    /// The kernel's id for this boot; `None` when it cannot be read (then a persisted anchor
    /// cannot be trusted across a restart).
    pub boot_id: Option<String>,
    /// Real time since that boot, suspend included.
    pub since_boot: Duration,
}

/// Distinguishes manual clocks, so two of them never claim the same boot.
static MANUAL_BOOTS: AtomicU64 = AtomicU64::new(0);

impl Clock {
    /// The machine's clocks.
    pub fn system() -> Self {
        Clock {
            source: Source::System,
        }
    }

    /// A clock frozen at `start` (wall clock and elapsed time) until a test moves it.
    pub fn manual(start: DateTime<Utc>) -> Self {
        Clock {
            source: Source::Manual(Arc::new(Mutex::new(ManualTime {
                wall: start,
                since_boot: Duration::zero(),
                boot_id: next_manual_boot_id(),
            }))),
        }
    }

    /// What the wall clock says now. The broker's rules do not use this directly; they use
    /// [`BrokerClock::now`].
    pub fn now(&self) -> DateTime<Utc> {
        match &self.source {
            Source::System => Utc::now(),
            Source::Manual(time) => lock(time).wall,
        }
    }

    /// What the kernel's wall clock says now, read past any time-faking library in this
    /// process (see [`system_since_boot`]). Equal to [`Clock::now`] unless this process's time
    /// is faked; other processes on the machine stamp their messages with this one.
    pub fn kernel_now(&self) -> DateTime<Utc> {
        match &self.source {
            Source::System => raw_clock(libc::CLOCK_REALTIME)
                .and_then(|since_epoch| DateTime::UNIX_EPOCH.checked_add_signed(since_epoch))
                .unwrap_or_else(Utc::now),
            Source::Manual(time) => lock(time).wall,
        }
    }

    /// How long since this boot of the machine, by a count that wall-clock steps cannot move.
    pub fn boot_time(&self) -> BootTime {
        match &self.source {
            Source::System => BootTime {
                boot_id: system_boot_id(),
                since_boot: system_since_boot(),
            },
            Source::Manual(time) => {
                let time = lock(time);
                BootTime {
                    boot_id: Some(time.boot_id.clone()),
                    since_boot: time.since_boot,
                }
            }
        }
    }

    /// Real time since this boot, as in [`Clock::boot_time`] but without the boot's id.
    pub fn since_boot(&self) -> Duration {
        match &self.source {
            Source::System => system_since_boot(),
            Source::Manual(time) => lock(time).since_boot,
        }
    }

    /// Lets `by` of real time pass on a manual clock: the wall clock and elapsed time both
    /// move. Does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(time) = &self.source {
            let mut time = lock(time);
            time.wall += by;
            time.since_boot += by;
        }
    }

    /// Steps a manual wall clock by `by` (negative for back) without any real time passing,
    /// as `date -s` or an NTP step would. Does nothing to the system clock.
    pub fn jump_wall(&self, by: Duration) {
        if let Source::Manual(time) = &self.source {
            lock(time).wall += by;
        }
    }

    /// Simulates a reboot of a manual clock: a new boot id and elapsed time from zero; the
    /// wall clock stays where it is.
    pub fn reboot(&self) {
        if let Source::Manual(time) = &self.source {
            let mut time = lock(time);
            time.boot_id = next_manual_boot_id();
            time.since_boot = Duration::zero();
        }
    }
}

fn lock(time: &Mutex<ManualTime>) -> std::sync::MutexGuard<'_, ManualTime> {
    time.lock().expect("clock mutex poisoned")
}

fn next_manual_boot_id() -> String {
    let n = MANUAL_BOOTS.fetch_add(1, Ordering::Relaxed);
    format!("manual-{}-{n}", std::process::id())
}

/// This boot's id, read once: it cannot change while the process runs, and the broker asks
/// for the time on every request.
fn system_boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_owned())
                .filter(|id| !id.is_empty())
        })
        .clone()
}

/// CLOCK_BOOTTIME read with a raw system call. Not `std::time::Instant` and not libc's
/// `clock_gettime`: time-faking libraries loaded with `LD_PRELOAD` (libfaketime) replace the
/// libc functions and fake the monotonic clocks too, but not the raw system call, which goes
/// straight to the kernel. BOOTTIME rather than MONOTONIC so that time spent suspended counts:
/// a session idle through a night's suspend has been idle all night.
///
/// A libfaketime built to intercept `syscall()` too (not the default) would fake even that;
/// the first reading is checked against `/proc/uptime`, a file no such library rewrites, and
/// if the two disagree the broker reads the file from then on (10 ms resolution, slower).
fn system_since_boot() -> Duration {
    static RAW_CLOCK_IS_REAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let raw = raw_clock(libc::CLOCK_BOOTTIME);
    let trusted = *RAW_CLOCK_IS_REAL.get_or_init(|| match (raw, proc_uptime()) {
        (Some(raw), Some(file)) => (raw - file).abs() < Duration::seconds(2),
        _ => true,
    });
    let reading = if trusted { raw } else { proc_uptime() };
    reading.or(raw).unwrap_or_else(process_elapsed)
}

/// The first field of `/proc/uptime`: seconds since boot, suspend included, to 10 ms.
fn proc_uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::milliseconds((seconds * 1000.0) as i64))
}

/// One of the kernel's clocks, by a raw `clock_gettime` system call; `None` if it fails.
#[cfg(target_os = "linux")]
fn raw_clock(id: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the kernel to fill in.
    let result =
        unsafe { libc::syscall(libc::SYS_clock_gettime, id, &mut now as *mut libc::timespec) };
    (result == 0).then(|| Duration::seconds(now.tv_sec) + Duration::nanoseconds(now.tv_nsec))
}

#[cfg(not(target_os = "linux"))]
fn raw_clock(_id: libc::clockid_t) -> Option<Duration> {
    None
}

/// Elapsed time since the first call in this process: the fallback where the kernel's boot
/// clock cannot be read. It cannot carry an anchor across a restart, which is why a missing
/// boot id makes [`BrokerClock::resume`] fall back to the wall clock.
fn process_elapsed() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    Duration::from_std(start.elapsed()).unwrap_or_default()
}

/// The setting that makes libfaketime fake only the wall clock.
const DONT_FAKE_MONOTONIC: &str = "FAKETIME_DONT_FAKE_MONOTONIC";

/// Restarts this process (same pid, same arguments) with libfaketime told to leave the
/// monotonic clock alone, when libfaketime is preloaded and nobody said either way.
///
/// Why: the broker's rules no longer read the monotonic clock, but its timers do (the async
/// runtime's, behind every read, write and idle timeout, long-poll deadline and sweep tick).
/// libfaketime fakes that clock too by default, and when the fake time of a running process
/// goes back, every timer set afterwards is already due until the fake time catches up: every
/// connection would be closed at once with `idle_timeout`, for as long as the jump. No real
/// clock step moves the monotonic clock, so this restores what the timers are built on and
/// leaves the faked wall clock in place, which is what a user of libfaketime means to test.
/// Returns only if there is nothing to do or the restart failed (which is logged).
pub fn keep_timers_off_a_faked_monotonic_clock() {
    use std::os::unix::process::CommandExt;
    let preloaded = std::env::var("LD_PRELOAD").unwrap_or_default();
    let decided = std::env::var_os(DONT_FAKE_MONOTONIC).is_some()
        || std::env::var_os("DONT_FAKE_MONOTONIC").is_some();
    if !preloaded.contains("faketime") || decided {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let name = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    tracing::info!(
        "libfaketime is preloaded: restarting with {DONT_FAKE_MONOTONIC}=1 so that only the \
         wall clock is faked and timeouts keep real time"
    );
    let error = std::process::Command::new(&exe)
        .arg0(name)
        .args(args)
        .env(DONT_FAKE_MONOTONIC, "1")
        .exec();
    tracing::warn!(
        "could not restart with {DONT_FAKE_MONOTONIC}=1 ({error}); timeouts follow the faked clock"
    );
}

/// What a broker clock persists so the next run can resume from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockAnchor {
    /// The broker's time at the reading.
    pub broker_time: DateTime<Utc>,
    /// The boot and elapsed time of that reading.
    pub boot: BootTime,
}

/// The time the broker's rules run on: `anchor + real time elapsed since the anchor`.
///
/// It moves at the speed of real time whatever the wall clock does, so no window (session
/// idle expiry, mail retention, forwards, rate limit, cooldown, leases) is shortened or
/// stretched by a wall-clock jump, in either direction.
#[derive(Clone)]
pub struct BrokerClock {
    clock: Clock,
    anchor: ClockAnchor,
}

/// How a broker clock was resumed at start, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Nothing persisted: the wall clock was taken.
    FromWallClock,
    /// Same boot as the persisted anchor: its time plus the real time since.
    SameBoot,
    /// Another boot: the wall clock, but never earlier than the persisted broker time.
    AfterReboot,
}

impl BrokerClock {
    /// Starts the broker clock from what the last run persisted, if anything. `floor` is for a
    /// database without an anchor (written before there was one): the latest time it records.
    ///
    /// - Same boot as the anchor: the anchor's time plus the real time elapsed since it,
    ///   whatever the wall clock says now. This is the case a jumped wall clock cannot fool.
    /// - Another boot (or an unknown one): there is no evidence of how long the machine was
    ///   off, so the wall clock is taken, but never earlier than the anchor (or `floor`): the
    ///   broker's time does not go back, so nothing stored looks like it was written in the
    ///   future and no window is stretched.
    pub fn resume(
        clock: Clock,
        persisted: Option<ClockAnchor>,
        floor: Option<DateTime<Utc>>,
    ) -> (BrokerClock, Resumed) {
        let boot = clock.boot_time();
        let wall = clock.now();
        let (broker_time, resumed) = match persisted {
            Some(last) if last.boot.boot_id.is_some() && last.boot.boot_id == boot.boot_id => {
                let elapsed = (boot.since_boot - last.boot.since_boot).max(Duration::zero());
                (last.broker_time + elapsed, Resumed::SameBoot)
            }
            Some(last) => (wall.max(last.broker_time), Resumed::AfterReboot),
            None => (
                floor.map_or(wall, |floor| wall.max(floor)),
                Resumed::FromWallClock,
            ),
        };
        let anchor = ClockAnchor { broker_time, boot };
        (BrokerClock { clock, anchor }, resumed)
    }

    /// The broker's time now.
    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = self.clock.since_boot() - self.anchor.boot.since_boot;
        self.anchor.broker_time + elapsed.max(Duration::zero())
    }

    /// The broker's time now with the reading it was taken from: what to persist.
    pub fn anchor_now(&self) -> ClockAnchor {
        let boot = self.clock.boot_time();
        let elapsed = (boot.since_boot - self.anchor.boot.since_boot).max(Duration::zero());
        ClockAnchor {
            broker_time: self.anchor.broker_time + elapsed,
            boot,
        }
    }

    /// What the wall clock says now.
    pub fn wall(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// How far the wall clock is ahead of the broker clock (negative: behind).
    pub fn wall_offset(&self) -> Duration {
        self.wall() - self.now()
    }

    /// The clock to compare a sender's `timestamp` with: the wall clock, because that is what
    /// senders stamp with, not the broker clock, which after a wall-clock jump differs from
    /// every sender's clock on the machine. Of the two readings of the wall clock (this
    /// process's and the kernel's, different only when this process's time is faked), the
    /// one nearer the stamp: a sender may or may not share this process's faked time.
    pub fn senders_clock(&self, stamp: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let (wall, kernel) = (self.wall(), self.clock.kernel_now());
        match stamp {
            Some(stamp) if (stamp - kernel).abs() < (stamp - wall).abs() => kernel,
            _ => wall,
        }
    }
}

/// Formats a time the way it is stored and sent: `2026-11-24T20:53:45.123Z`.
pub fn to_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time (any offset) into UTC.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        parse("2026-01-01T00:00:00Z").unwrap()
    }

    #[test]
    fn stored_times_are_fixed_width_utc_and_sort_as_text() {
        let early = parse("2026-01-02T03:04:05+02:00").unwrap();
        let late = early + Duration::milliseconds(1500);
        assert_eq!(to_text(early), "2026-01-02T01:04:05.000Z");
        assert_eq!(to_text(late), "2026-01-02T01:04:06.500Z");
        assert!(to_text(early) < to_text(late));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(start());
        assert_eq!(clock.now(), start());
        clock.advance(Duration::hours(2));
        assert_eq!(clock.now(), start() + Duration::hours(2));
        assert_eq!(clock.boot_time().since_boot, Duration::hours(2));
        clock.jump_wall(Duration::days(8));
        assert_eq!(
            clock.now(),
            start() + Duration::hours(2) + Duration::days(8)
        );
        assert_eq!(clock.boot_time().since_boot, Duration::hours(2));
    }

    #[test]
    fn the_broker_clock_follows_elapsed_time_not_wall_clock_jumps() {
        let clock = Clock::manual(start());
        let (broker, resumed) = BrokerClock::resume(clock.clone(), None, None);
        assert_eq!(resumed, Resumed::FromWallClock);
        clock.jump_wall(Duration::days(8));
        assert_eq!(broker.now(), start());
        assert_eq!(broker.wall_offset(), Duration::days(8));
        clock.jump_wall(-Duration::days(8) - Duration::hours(1));
        clock.advance(Duration::minutes(5));
        assert_eq!(broker.now(), start() + Duration::minutes(5));
        assert_eq!(broker.wall_offset(), -Duration::hours(1));
    }

    #[test]
    fn a_restart_in_the_same_boot_resumes_from_the_anchor_plus_elapsed_time() {
        let clock = Clock::manual(start());
        let (first, _) = BrokerClock::resume(clock.clone(), None, None);
        let anchor = first.anchor_now();
        clock.advance(Duration::minutes(3));
        clock.jump_wall(Duration::days(8));
        let (second, resumed) = BrokerClock::resume(clock.clone(), Some(anchor), None);
        assert_eq!(resumed, Resumed::SameBoot);
        assert_eq!(second.now(), start() + Duration::minutes(3));
    }

    #[test]
    fn after_a_reboot_the_wall_clock_is_taken_but_never_before_the_anchor() {
        let clock = Clock::manual(start());
        let (first, _) = BrokerClock::resume(clock.clone(), None, None);
        clock.advance(Duration::hours(1));
        let anchor = first.anchor_now();
        clock.reboot();
        clock.jump_wall(-Duration::hours(3));
        let (behind, resumed) = BrokerClock::resume(clock.clone(), Some(anchor.clone()), None);
        assert_eq!(resumed, Resumed::AfterReboot);
        assert_eq!(
            behind.now(),
            start() + Duration::hours(1),
            "not back in time"
        );
        clock.jump_wall(Duration::days(1));
        let (ahead, _) = BrokerClock::resume(clock.clone(), Some(anchor), None);
        assert_eq!(ahead.now(), clock.now(), "no evidence: the wall clock");
    }

    #[test]
    fn a_floor_keeps_a_fresh_anchor_from_going_back() {
        let clock = Clock::manual(start());
        let floor = start() + Duration::hours(2);
        let (broker, _) = BrokerClock::resume(clock, None, Some(floor));
        assert_eq!(broker.now(), floor);
    }

    #[test]
    fn the_system_boot_clock_reads_the_kernel_or_proc_uptime() {
        let read = Clock::system().boot_time().since_boot;
        let raw = raw_clock(libc::CLOCK_BOOTTIME).unwrap();
        let file = proc_uptime().unwrap();
        let near = |other: Duration| (read - other).abs() < Duration::seconds(1);
        assert!(near(raw) || near(file), "{read} {raw} {file}");
    }

    #[test]
    fn the_system_boot_clock_counts_up() {
        let clock = Clock::system();
        let first = clock.boot_time().since_boot;
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = clock.boot_time().since_boot;
        assert!(
            second - first >= Duration::milliseconds(15),
            "{first} {second}"
        );
    }
}
