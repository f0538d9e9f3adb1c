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
mod tests;
