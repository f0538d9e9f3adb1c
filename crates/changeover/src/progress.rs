//! The live display on a terminal (indicatif): while a deploy runs, one
//! aggregate bar (done/total, failed, in flight, elapsed, ETA) and under it
//! a line per unit in flight with its phase and how long it has been in it,
//! and the health gate's state while it is closed:
//!
//! ```text
//! ████████████░░░░░░░░░░░░ 2/4 done · 0 failed · 2/2 in flight · 3s · ETA 3s
//!   local#3      health       1.2s
//!   local#4      steps        0.4s
//! ```
//!
//! Lines the reporter prints (results, warnings, hooks) go above it; at the
//! end of the deploy the unit lines go, the bar stays in its final state and
//! the summary prints under it. All of it behind one mutex: events come from
//! many tasks, and a ticker thread refreshes the times every 100 ms.

use changeover_core::event::{Event, Phase};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Unit lines shown at most; the rest are counted.
const SHOWN: usize = 10;
/// How often the in-flight times are refreshed.
const TICK: Duration = Duration::from_millis(100);

const RUNNING: &str = "{bar:24} {pos}/{len} done · {prefix} · {elapsed} · ETA {left}{msg}";
const FINISHED: &str = "{bar:24} {pos}/{len} done · {prefix} · {elapsed}";

/// Whether stderr gets the live display: `CHANGEOVER_PROGRESS=tty` or
/// `plain` decides; otherwise a terminal that is not `TERM=dumb`.
pub fn wanted() -> bool {
    match std::env::var("CHANGEOVER_PROGRESS").as_deref() {
        Ok("tty") => true,
        Ok("plain") => false,
        _ => {
            std::io::stderr().is_terminal()
                && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
        }
    }
}

pub struct Live {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    screen: Screen,
    board: Option<Board>,
    /// The current (or last) deploy's unit and wave counts.
    units: usize,
    waves: usize,
    ticking: bool,
    /// The screen is stderr: `AboveBars` writes go around this bar.
    on_stderr: bool,
}

impl Live {
    pub fn stderr() -> Live {
        Live::on(Screen::new(Box::new(std::io::stderr()), None), true)
    }

    /// The display written to `sink` as to a terminal of `width` × 24 (tests).
    #[cfg(test)]
    pub fn to(sink: Box<dyn Write + Send>, width: u16) -> Live {
        Live::on(Screen::new(sink, Some((width, 24))), false)
    }

    fn on(screen: Screen, on_stderr: bool) -> Live {
        Live {
            shared: Arc::new(Mutex::new(Shared {
                screen,
                board: None,
                units: 0,
                waves: 0,
                ticking: false,
                on_stderr,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Show an event: update the display and print `text(units, waves)`
    /// (the reporter's line for it, given the run's size) above it.
    pub fn show(&self, event: &Event, text: impl FnOnce(usize, usize) -> Option<String>) {
        let mut s = self.lock();
        match event {
            Event::DeployStarted {
                units,
                waves,
                max_out_of_service,
                ..
            } => {
                if let Some(old) = s.board.take() {
                    old.finish(&s.screen);
                }
                s.units = *units;
                s.waves = *waves;
                if let Some(line) = text(*units, *waves) {
                    s.print(&line);
                }
                s.board = Some(Board::new(
                    &s.screen,
                    *units,
                    *max_out_of_service,
                    s.on_stderr,
                ));
                if !s.ticking {
                    s.ticking = tick(Arc::clone(&self.shared));
                }
            }
            Event::DeployFinished { .. } => {
                if let Some(board) = s.board.take() {
                    board.finish(&s.screen);
                }
                if let Some(line) = text(s.units, s.waves) {
                    s.print(&line);
                }
            }
            _ => {
                if let Some(board) = s.board.as_mut() {
                    board.apply(event);
                    board.refresh();
                }
                if let Some(line) = text(s.units, s.waves) {
                    s.print(&line);
                }
            }
        }
    }
}

impl Shared {
    /// Above the bars while a deploy runs, else as a plain line.
    fn print(&self, text: &str) {
        match &self.board {
            Some(board) => board.bar.println(text),
            None => self.screen.line(text),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut s = self.lock();
        if let Some(board) = s.board.take() {
            board.finish(&s.screen);
        }
    }
}

/// Refresh the times until the board is gone; false if no thread could start.
fn tick(shared: Arc<Mutex<Shared>>) -> bool {
    std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            match s.board.as_mut() {
                Some(board) => board.refresh(),
                None => {
                    s.ticking = false;
                    return;
                }
            }
        })
        .is_ok()
}

/// One deploy's display.
struct Board {
    bar: ProgressBar,
    total: usize,
    done: usize,
    failed: usize,
    in_flight: usize,
    max_in_flight: usize,
    /// Units in flight by the order they started in, and their phase.
    flights: BTreeMap<u64, Flight>,
    by_name: HashMap<String, u64>,
    seq: u64,
    /// Units whose failing health check holds the gate closed.
    gate: Vec<String>,
    witness: Option<(u64, u64)>,
    /// Length, position and counts as last given to the bar.
    shown: (u64, u64, String),
    /// Registered for `AboveBars`.
    on_stderr: bool,
}

struct Flight {
    unit: String,
    phase: Phase,
    since: Instant,
}

impl Board {
    fn new(screen: &Screen, total: usize, max_in_flight: usize, on_stderr: bool) -> Board {
        let target = ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 20);
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        bar.set_style(style(RUNNING));
        if on_stderr {
            *self::on_stderr() = Some(bar.clone());
        }
        let mut board = Board {
            bar,
            total,
            done: 0,
            failed: 0,
            in_flight: 0,
            max_in_flight,
            flights: BTreeMap::new(),
            by_name: HashMap::new(),
            seq: 0,
            gate: Vec::new(),
            witness: None,
            shown: (total as u64, 0, String::new()),
            on_stderr,
        };
        board.refresh();
        board
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::UnitPhase { unit, phase, .. } => {
                let seq = match self.by_name.get(unit) {
                    Some(&seq) => seq,
                    None => {
                        self.seq += 1;
                        self.by_name.insert(unit.clone(), self.seq);
                        self.seq
                    }
                };
                self.flights.insert(
                    seq,
                    Flight {
                        unit: unit.clone(),
                        phase: *phase,
                        since: Instant::now(),
                    },
                );
            }
            Event::UnitFinished { unit, result, .. } => {
                if let Some(seq) = self.by_name.remove(unit) {
                    self.flights.remove(&seq);
                }
                self.in_flight = self.in_flight.min(self.flights.len());
                if result.result == "failed" {
                    self.failed += 1;
                }
                self.done += 1;
            }
            Event::Progress {
                done,
                total,
                failed,
                in_flight,
                max_in_flight,
                gated_on,
                ..
            } => {
                self.done = *done;
                self.total = *total;
                self.failed = *failed;
                self.in_flight = *in_flight;
                self.max_in_flight = *max_in_flight;
                self.gate = gated_on.clone();
            }
            Event::GateClosed { unhealthy, .. } => {
                self.gate = unhealthy.iter().map(|u| u.unit.clone()).collect();
            }
            Event::GateOpened { .. } => self.gate.clear(),
            Event::WitnessProgress { requests, failures } => {
                self.witness = Some((*requests, *failures));
            }
            _ => {}
        }
    }

    fn counts(&self) -> String {
        let mut s = format!("{} failed", self.failed);
        let in_flight = self.in_flight.max(self.flights.len());
        let _ = write!(s, " · {in_flight}/{} in flight", self.max_in_flight);
        if let Some((requests, failures)) = self.witness {
            let _ = write!(s, " · witness {requests} req, {failures} failed");
        }
        s
    }

    /// The lines under the bar: units in flight, the gate.
    fn detail(&self) -> String {
        let mut s = String::new();
        let now = Instant::now();
        for f in self.flights.values().take(SHOWN) {
            let _ = write!(
                s,
                "\n  {:<12} {:<10} {:>5.1}s",
                f.unit,
                f.phase.as_str(),
                now.saturating_duration_since(f.since).as_secs_f64()
            );
        }
        if self.flights.len() > SHOWN {
            let _ = write!(s, "\n  … and {} more in flight", self.flights.len() - SHOWN);
        }
        if !self.gate.is_empty() {
            let _ = write!(
                s,
                "\n  gate closed, waiting for: {}",
                crate::reporter::names(&self.gate, true)
            );
        }
        s
    }

    /// Redraw: what changed, then the unit lines (their times move).
    fn refresh(&mut self) {
        let counts = self.counts();
        if counts != self.shown.2 {
            self.bar.set_prefix(counts.clone());
            self.shown.2 = counts;
        }
        if self.total as u64 != self.shown.0 {
            self.shown.0 = self.total as u64;
            self.bar.set_length(self.shown.0);
        }
        if self.done as u64 != self.shown.1 {
            self.shown.1 = self.done as u64;
            self.bar.set_position(self.shown.1);
        }
        self.bar.set_message(self.detail());
    }

    /// The unit lines go; the bar stays, in its final state.
    fn finish(self, screen: &Screen) {
        if self.on_stderr {
            *on_stderr() = None;
        }
        self.bar.set_style(style(FINISHED));
        self.bar.set_length(self.total as u64);
        self.bar.set_position(self.done as u64);
        self.bar.set_prefix(format!("{} failed", self.failed));
        self.bar.set_message("");
        self.bar.finish();
        // The last line is padded to the terminal's width: go on below it.
        screen.raw("\r\n");
    }
}

/// The bar on stderr while a deploy runs there.
static ON_STDERR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn on_stderr() -> MutexGuard<'static, Option<ProgressBar>> {
    ON_STDERR.lock().unwrap_or_else(|e| e.into_inner())
}

/// A writer to the terminal the live display is on: each write goes out
/// with the bars taken away first and drawn again under it. The reporter
/// writes NDJSON through it when stdout is that terminal; anything else
/// that writes to stderr during a deploy (`-v`'s log records) needs it too,
/// or leaves stale copies of the bars behind.
pub struct AboveBars<W: Write>(pub W);

impl<W: Write> AboveBars<W> {
    fn around<R>(&mut self, f: impl FnOnce(&mut W) -> R) -> R {
        let bar = on_stderr().clone();
        match bar {
            Some(bar) => bar.suspend(|| f(&mut self.0)),
            None => f(&mut self.0),
        }
    }
}

impl<W: Write> Write for AboveBars<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.around(|w| w.write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.around(|w| w.write_all(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("left", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            if s.pos() == 0 {
                let _ = w.write_str("-");
            } else {
                let _ = w.write_str(&compact(s.eta()));
            }
        })
}

/// `4s`, `3m05s`, `2h07m`.
fn compact(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

/// The terminal as indicatif draws on it: writes are collected and go out
/// in one write per draw.
#[derive(Clone)]
struct Screen(Arc<Mutex<ScreenOut>>);

struct ScreenOut {
    buf: Vec<u8>,
    sink: Box<dyn Write + Send>,
    /// Columns × rows; `None`: ask the terminal on stderr.
    size: Option<(u16, u16)>,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Screen")
    }
}

impl Screen {
    fn new(sink: Box<dyn Write + Send>, size: Option<(u16, u16)>) -> Screen {
        Screen(Arc::new(Mutex::new(ScreenOut {
            buf: Vec::new(),
            sink,
            size,
        })))
    }

    fn out(&self) -> MutexGuard<'_, ScreenOut> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn size(&self) -> (u16, u16) {
        if let Some(size) = self.out().size {
            return size;
        }
        stderr_size().unwrap_or((80, 24))
    }

    fn push(&self, s: &str) {
        self.out().buf.extend_from_slice(s.as_bytes());
    }

    /// Straight out, with what was collected before.
    fn raw(&self, s: &str) {
        self.push(s);
        let _ = TermLike::flush(self);
    }

    /// A line of text while no bar is drawn.
    fn line(&self, text: &str) {
        self.raw(&format!("{text}\n"));
    }
}

/// The terminal's columns and rows, when stderr is one that says.
fn stderr_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes one winsize into the struct given.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

impl TermLike for Screen {
    fn width(&self) -> u16 {
        self.size().0
    }

    fn height(&self) -> u16 {
        self.size().1
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.push(&format!("\x1b[{n}A"));
        }
        Ok(())
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.push(&format!("\x1b[{n}B"));
        }
        Ok(())
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.push(&format!("\x1b[{n}C"));
        }
        Ok(())
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.push(&format!("\x1b[{n}D"));
        }
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.push(s);
        self.push("\n");
        Ok(())
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.push(s);
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.push("\r\x1b[2K");
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        let mut out = self.out();
        let buf = std::mem::take(&mut out.buf);
        out.sink.write_all(&buf)?;
        out.sink.flush()
    }
}

#[cfg(test)]
mod tests {
    //! The reporter's output for synthetic event streams, plain and live.

    use super::*;
    use crate::reporter::Reporter;
    use changeover_core::event::{EventSink, Outcome};
    use changeover_core::event::{Phase, UnitResult, UnitResultJson, UnitSummary};

    const PHASES: [Phase; 7] = [
        Phase::TakeOut,
        Phase::Drain,
        Phase::Disable,
        Phase::Steps,
        Phase::Health,
        Phase::PutBack,
        Phase::Confirm,
    ];

    /// A rollout of `n` units in waves of `batch`, every `fail_every`-th
    /// unit failing its health check and left out, as the dispatcher
    /// reports it: phases, results, a progress event after each result and
    /// every 2 s of (virtual) elapsed time.
    pub(crate) fn synthetic(n: usize, batch: usize, fail_every: usize) -> Vec<(Duration, Event)> {
        let name = |i: usize| format!("web-{}", i + 1);
        let fails = |i: usize| fail_every > 0 && i % fail_every == fail_every - 1;
        let ms = Duration::from_millis;
        let waves = n.div_ceil(batch);
        let mut ev = vec![(
            ms(0),
            Event::DeployStarted {
                deploy_id: "20261202T100000.000Z-4242".into(),
                app: "shop".into(),
                target: None,
                version: "v2".into(),
                units: n,
                waves,
                max_out_of_service: batch,
            },
        )];
        let (mut done, mut failed, mut left_out) = (0, 0, Vec::<String>::new());
        let mut next_tick = 2000;
        let mut t = 0u64;
        for w in 0..waves {
            let units: Vec<usize> = (w * batch..((w + 1) * batch).min(n)).collect();
            ev.push((
                ms(t),
                Event::WaveStarted {
                    wave: w + 1,
                    units: units.iter().map(|&i| name(i)).collect(),
                },
            ));
            for (k, p) in PHASES.iter().enumerate() {
                for (j, &i) in units.iter().enumerate() {
                    if fails(i) && k > 4 {
                        continue;
                    }
                    ev.push((
                        ms(t + 1 + 300 * k as u64 + j as u64 % 100),
                        Event::UnitPhase {
                            unit: name(i),
                            host: name(i),
                            phase: *p,
                        },
                    ));
                }
            }
            let end = t + 2300;
            while next_tick < end {
                let mut out = left_out.clone();
                if next_tick < t + 2200 {
                    out.extend(units.iter().map(|&i| name(i)));
                }
                ev.push((
                    ms(next_tick),
                    Event::Progress {
                        done,
                        total: n,
                        failed,
                        in_flight: if next_tick < t + 2200 { units.len() } else { 0 },
                        max_in_flight: batch,
                        out_of_service: out,
                        gated_on: vec![],
                    },
                ));
                next_tick += 2000;
            }
            for (j, &i) in units.iter().enumerate() {
                done += 1;
                let at = ms(t + 2200 + j as u64 % 100);
                let result = if fails(i) {
                    failed += 1;
                    left_out.push(name(i));
                    UnitResult::Failed {
                        phase: Phase::Health,
                        error: "not healthy within 30s: connection refused".into(),
                        in_rotation: false,
                    }
                } else {
                    UnitResult::Updated
                };
                ev.push((
                    at,
                    Event::UnitFinished {
                        unit: name(i),
                        host: name(i),
                        result: UnitResultJson::from(&result),
                        output: None,
                    },
                ));
                let mut out = left_out.clone();
                out.extend(units[j + 1..].iter().map(|&i| name(i)));
                ev.push((
                    at,
                    Event::Progress {
                        done,
                        total: n,
                        failed,
                        in_flight: units.len() - j - 1,
                        max_in_flight: batch,
                        out_of_service: out,
                        gated_on: vec![],
                    },
                ));
            }
            t = end;
        }
        ev.sort_by_key(|(at, _)| *at);
        ev.push((
            ms(t),
            Event::DeployFinished {
                outcome: if failed > 0 {
                    Outcome::Failed
                } else {
                    Outcome::Success
                },
                updated: n - failed,
                failed,
                reverted: 0,
                skipped: 0,
                untouched: 0,
                current: 0,
                max_out_of_service_seen: batch + failed,
                units: (0..n)
                    .map(|i| UnitSummary {
                        unit: name(i),
                        host: name(i),
                        state: if fails(i) { "failed" } else { "updated" }.into(),
                        in_rotation: !fails(i),
                        detail: fails(i)
                            .then(|| "health: not healthy within 30s: connection refused".into()),
                    })
                    .collect(),
            },
        ));
        ev
    }

    /// A `Write` whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    fn plain(events: &[(Duration, Event)], quiet: bool, verbose: u8) -> String {
        let buf = Buf::default();
        let reporter = Reporter::plain_to(Box::new(buf.clone()), quiet, verbose);
        for (at, e) in events {
            reporter.emit(*at, e.clone());
        }
        buf.text()
    }

    /// What the reporter wrote for `synthetic(8, 2, 5)` before live
    /// progress: small runs keep it line for line.
    const EIGHT_UNITS: &str = r#"deploying shop v2 to 8 unit(s) in 4 wave(s), at most 2 out of service (deploy 20261202T100000.000Z-4242)
    0.0s wave 1: web-1, web-2
    0.0s web-1        take-out
    0.0s web-2        take-out
    0.3s web-1        drain
    0.3s web-2        drain
    0.6s web-1        disable
    0.6s web-2        disable
    0.9s web-1        steps
    0.9s web-2        steps
    1.2s web-1        health
    1.2s web-2        health
    1.5s web-1        put-back
    1.5s web-2        put-back
    1.8s web-1        confirm
    1.8s web-2        confirm
    2.0s [0/8 done] in flight 2/2 · out of service: web-1, web-2
    2.2s web-1        ✓ updated
    2.2s [1/8 done] in flight 1/2 · out of service: web-2
    2.2s web-2        ✓ updated
    2.2s [2/8 done] in flight 0/2 · out of service: none
    2.3s wave 2: web-3, web-4
    2.3s web-3        take-out
    2.3s web-4        take-out
    2.6s web-3        drain
    2.6s web-4        drain
    2.9s web-3        disable
    2.9s web-4        disable
    3.2s web-3        steps
    3.2s web-4        steps
    3.5s web-3        health
    3.5s web-4        health
    3.8s web-3        put-back
    3.8s web-4        put-back
    4.0s [2/8 done] in flight 2/2 · out of service: web-3, web-4
    4.1s web-3        confirm
    4.1s web-4        confirm
    4.5s web-3        ✓ updated
    4.5s [3/8 done] in flight 1/2 · out of service: web-4
    4.5s web-4        ✓ updated
    4.5s [4/8 done] in flight 0/2 · out of service: none
    4.6s wave 3: web-5, web-6
    4.6s web-5        take-out
    4.6s web-6        take-out
    4.9s web-5        drain
    4.9s web-6        drain
    5.2s web-5        disable
    5.2s web-6        disable
    5.5s web-5        steps
    5.5s web-6        steps
    5.8s web-5        health
    5.8s web-6        health
    6.0s [4/8 done] in flight 2/2 · out of service: web-5, web-6
    6.1s web-6        put-back
    6.4s web-6        confirm
    6.8s web-5        ✗ failed in health: not healthy within 30s: connection refused (left out of rotation)
    6.8s [5/8 done, 1 failed] in flight 1/2 · out of service: web-5, web-6
    6.8s web-6        ✓ updated
    6.8s [6/8 done, 1 failed] in flight 0/2 · out of service: web-5
    6.9s wave 4: web-7, web-8
    6.9s web-7        take-out
    6.9s web-8        take-out
    7.2s web-7        drain
    7.2s web-8        drain
    7.5s web-7        disable
    7.5s web-8        disable
    7.8s web-7        steps
    7.8s web-8        steps
    8.0s [6/8 done, 1 failed] in flight 2/2 · out of service: web-5, web-7, web-8
    8.1s web-7        health
    8.1s web-8        health
    8.4s web-7        put-back
    8.4s web-8        put-back
    8.7s web-7        confirm
    8.7s web-8        confirm
    9.1s web-7        ✓ updated
    9.1s [7/8 done, 1 failed] in flight 1/2 · out of service: web-5, web-8
    9.1s web-8        ✓ updated
    9.1s [8/8 done, 1 failed] in flight 0/2 · out of service: web-5
DEPLOY FAILED after 9.2s: 7 updated, 0 already current, 1 failed, 0 put back unchanged, 0 skipped, 0 untouched; at most 3 out of service at once
  web-5        failed     OUT of rotation — health: not healthy within 30s: connection refused
"#;

    #[test]
    fn eight_units_print_todays_lines() {
        let out = plain(&synthetic(8, 2, 5), false, 0);
        assert_eq!(out, EIGHT_UNITS);
        assert_eq!(out.lines().count(), 81);
    }

    #[test]
    fn ten_thousand_units_print_a_few_hundred_lines() {
        let mut counts = Vec::new();
        for n in [8, 1_000, 10_000] {
            let out = plain(&synthetic(n, 100.min(n / 4).max(2), 500), false, 0);
            let lines: Vec<&str> = out.lines().collect();
            counts.push((n, lines.len()));
            if n < 1_000 {
                continue;
            }
            assert!(
                !out.contains(" take-out\n") && !out.contains(" drain\n"),
                "no phase lines"
            );
            assert!(!out.contains("✓ updated"), "no line per updated unit");
            // Every failure is named, with its reason.
            let failures = n / 500;
            assert_eq!(out.matches("✗ failed in health").count(), failures, "{out}");
            // Progress at most every 2 s of the run (its elapsed), each
            // short: the out-of-service list is cut.
            let progress: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.contains(" done") && l.contains("] in flight"))
                .collect();
            let secs = |l: &str| {
                l.trim_start()
                    .split('s')
                    .next()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap()
            };
            for pair in progress.windows(2) {
                assert!(secs(pair[1]) - secs(pair[0]) >= 1.95, "{pair:?}");
            }
            assert!(progress.iter().all(|l| l.len() < 200), "{progress:?}");
            assert!(out.contains("out of service: "), "{out}");
            assert!(
                out.lines()
                    .last()
                    .unwrap()
                    .contains("more (`changeover status` shows every unit)")
                    || failures <= 50
            );
        }
        eprintln!("plain lines: {counts:?}");
        let ten_k = counts.iter().find(|(n, _)| *n == 10_000).unwrap().1;
        assert!(ten_k <= 300, "{counts:?}");
    }

    #[test]
    fn quiet_prints_failures_warnings_and_the_summary() {
        for n in [8, 10_000] {
            let out = plain(
                &synthetic(n, 100.min(n / 4).max(2), if n == 8 { 5 } else { 500 }),
                true,
                0,
            );
            assert!(!out.contains("deploying"), "{out}");
            assert!(!out.contains("wave 1"), "{out}");
            assert!(!out.contains("✓ updated"), "{out}");
            assert!(!out.contains("] in flight"), "{out}");
            assert!(out.contains("✗ failed in health"), "{out}");
            assert!(out.contains("DEPLOY FAILED after"), "{out}");
            if n == 8 {
                assert_eq!(out.lines().count(), 3, "{out}");
            }
        }
    }

    #[test]
    fn verbose_keeps_phase_lines_of_a_large_run() {
        let out = plain(&synthetic(40, 10, 0), false, 1);
        assert_eq!(out.matches(" health\n").count(), 40);
        assert_eq!(out.matches("✓ updated").count(), 40);
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
                continue;
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn live_shows_the_bar_units_in_flight_and_leaves_the_summary() {
        let buf = Buf::default();
        let reporter = Reporter::live_to(Live::to(Box::new(buf.clone()), 100), 0);
        let events = synthetic(8, 2, 5);
        for (at, e) in &events {
            reporter.emit(*at, e.clone());
            if matches!(e, Event::UnitPhase { .. }) {
                // Let the ticker draw the unit lines now and then.
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        let raw = buf.text();
        let text = strip_ansi(&raw);
        assert!(text.contains("8/8 done · 1 failed"), "{text}");
        assert!(text.contains("/8 done · "), "{text}");
        assert!(text.contains("  web-7        "), "a unit line: {text}");
        assert!(
            text.contains("✓ updated") && text.contains("✗ failed in health"),
            "{text}"
        );
        assert!(
            !text.contains("0.0s web-1        take-out"),
            "no phase lines without -v: {text}"
        );
        assert!(!text.contains("] in flight"), "no progress lines: {text}");
        let summary = text.rfind("DEPLOY FAILED after").expect("the summary");
        let bar = text.rfind("8/8 done").unwrap();
        assert!(bar < summary, "the summary under the final bar");
        assert!(
            !text[summary..].contains("in flight"),
            "nothing drawn after it: {}",
            &text[summary..]
        );
        // With -v: the phase lines too.
        let buf = Buf::default();
        let reporter = Reporter::live_to(Live::to(Box::new(buf.clone()), 100), 1);
        for (at, e) in &events {
            reporter.emit(*at, e.clone());
        }
        assert!(strip_ansi(&buf.text()).contains("0.0s web-1        take-out"));
    }

    #[test]
    fn live_names_what_the_gate_waits_for() {
        let buf = Buf::default();
        let live = Live::to(Box::new(buf.clone()), 100);
        let reporter = Reporter::live_to(live, 0);
        let mut events = synthetic(4, 2, 0);
        let end = events.pop().unwrap();
        events.push((
            Duration::from_millis(4_700),
            Event::Progress {
                done: 4,
                total: 4,
                failed: 0,
                in_flight: 0,
                max_in_flight: 2,
                out_of_service: vec![],
                gated_on: vec!["web-7".into()],
            },
        ));
        for (at, e) in &events {
            reporter.emit(*at, e.clone());
        }
        // The ticker draws it while the gate holds.
        std::thread::sleep(Duration::from_millis(300));
        reporter.emit(end.0, end.1);
        let text = strip_ansi(&buf.text());
        assert!(text.contains("gate closed, waiting for: web-7"), "{text}");
    }
}
