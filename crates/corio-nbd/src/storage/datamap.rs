//! What is known of a file's allocation map: runs of data and holes found
//! with `SEEK_DATA` / `SEEK_HOLE`, kept until a request changes them
//! (QEMU's file-posix block-status cache, generalised to many runs).
//!
//! A plain write never creates a hole, so it leaves data runs alone: it
//! only cuts the holes it may have filled (widened to [`WRITE_GRAIN`], as
//! the file system allocates whole blocks) and records what it wrote as
//! data. A trim or a zeroing may turn data into a hole (or a hole into
//! allocated zeroes), so it cuts every run it overlaps.
//!
//! A scan ([`scan`]) is slow on some file systems (tmpfs walks its page
//! cache: milliseconds for a large data run), so the caller runs it in the
//! thread pool; meanwhile writes and trims may complete. Two generation
//! counters tell [`DataMap::insert`] what the scan may have missed: after a
//! write, its holes are dropped (its data runs still hold); after a trim or
//! zeroing, all of it.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::{Mutex, MutexGuard};

use rustix::fs::SeekFrom;

/// Writes cut the holes around them to this alignment: a file system
/// allocates whole blocks, so bytes next to the written range may turn
/// into data too.
pub(super) const WRITE_GRAIN: u64 = 1 << 20;

/// Most seek pairs one scan makes walking from a known boundary up to the
/// asked position; past that it scans from the position itself.
const MAX_SCAN_STEPS: usize = 16;

/// Most runs kept; beyond that the one farthest from the newest goes.
const MAX_RUNS: usize = 4096;

/// A run of the allocation map: `[start, end)` is all data or all hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) data: bool,
}

/// The generations a scan started at (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Generations {
    discards: u64,
    writes: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Disjoint runs, by start.
    runs: BTreeMap<u64, Run>,
    discards: u64,
    writes: u64,
}

/// The known runs of one file.
#[derive(Debug, Default)]
pub(super) struct DataMap {
    state: Mutex<State>,
}

impl State {
    /// The run containing `pos`, if known.
    fn get(&self, pos: u64) -> Option<Run> {
        let (_, r) = self.runs.range(..=pos).next_back()?;
        (pos < r.end).then_some(*r)
    }

    /// Forgets `[start, end)`: runs overlapping it are cut to what lies
    /// outside it, and dropped when `filter` is false for them.
    fn cut(&mut self, start: u64, end: u64, filter: impl Fn(&Run) -> bool) {
        let first = match self.runs.range(..start).next_back() {
            Some((&k, r)) if r.end > start => k,
            _ => start,
        };
        let hit: Vec<Run> = self
            .runs
            .range(first..end)
            .map(|(_, r)| *r)
            .filter(|r| filter(r))
            .collect();
        for r in hit {
            self.runs.remove(&r.start);
            if r.start < start {
                self.put(Run { end: start, ..r });
            }
            if r.end > end {
                self.put(Run { start: end, ..r });
            }
        }
    }

    fn put(&mut self, r: Run) {
        self.runs.insert(r.start, r);
    }

    /// Records `run`, which supersedes what overlaps it, merged with
    /// touching or overlapping runs of its kind.
    fn add(&mut self, run: Run) {
        let mut r = run;
        // Same-kind neighbours (touching included) widen the new run.
        if let Some((_, p)) = self.runs.range(..=r.start).next_back() {
            if p.data == r.data && p.end >= r.start {
                r.start = p.start;
                r.end = r.end.max(p.end);
            }
        }
        // Same-kind runs inside or touching the end widen it too.
        loop {
            let far = self
                .runs
                .range(r.start..=r.end)
                .filter(|(_, n)| n.data == r.data)
                .map(|(_, n)| n.end)
                .max();
            match far {
                Some(e) if e > r.end => r.end = e,
                _ => break,
            }
        }
        self.cut(r.start, r.end, |_| true);
        self.put(r);
        while self.runs.len() > MAX_RUNS {
            let (&lo, _) = self.runs.first_key_value().expect("not empty");
            let (&hi, _) = self.runs.last_key_value().expect("not empty");
            let far = if r.start - lo > hi - r.start { lo } else { hi };
            self.runs.remove(&far);
        }
    }
}

impl DataMap {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The known run containing `pos`.
    pub(super) fn lookup(&self, pos: u64) -> Option<Run> {
        self.lock().get(pos)
    }

    /// Where a scan for `pos` should start (the end of the nearest known
    /// run below it, so that the run found starts where it really does),
    /// and the generations to hand back to [`insert`](Self::insert).
    pub(super) fn scan_origin(&self, pos: u64) -> (u64, Generations) {
        let s = self.lock();
        let from = match s.runs.range(..=pos).next_back() {
            Some((_, r)) if r.end <= pos => r.end,
            Some(_) => pos,
            None => 0,
        };
        let g = Generations {
            discards: s.discards,
            writes: s.writes,
        };
        (from, g)
    }

    /// Records what a scan started at `g` found, minus what requests
    /// completed since may have changed.
    pub(super) fn insert(&self, runs: &[Run], g: Generations) {
        let mut s = self.lock();
        if s.discards != g.discards {
            return;
        }
        let holes_ok = s.writes == g.writes;
        for r in runs.iter().filter(|r| r.data || holes_ok) {
            s.add(*r);
        }
    }

    /// A write of `[offset, offset + len)` completed: it is data now, and
    /// holes around it may be gone.
    pub(super) fn wrote(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut s = self.lock();
        s.writes += 1;
        let lo = offset / WRITE_GRAIN * WRITE_GRAIN;
        let hi = (offset + len).div_ceil(WRITE_GRAIN) * WRITE_GRAIN;
        s.cut(lo, hi, |r| !r.data);
        s.add(Run {
            start: offset,
            end: offset + len,
            data: true,
        });
    }

    /// A trim or zeroing of `[offset, offset + len)` completed (or failed
    /// part way): nothing known there holds any more.
    pub(super) fn discarded(&self, offset: u64, len: u64) {
        let mut s = self.lock();
        s.discards += 1;
        s.cut(offset, offset + len, |_| true);
    }
}

/// One seek pair: the run that starts at `pos` (< `size`).
fn run_from(file: &File, size: u64, pos: u64) -> Run {
    let run = |end: u64, data| Run {
        start: pos,
        end: end.min(size),
        data,
    };
    match rustix::fs::seek(file, SeekFrom::Data(pos)) {
        Ok(d) if d > pos => run(d, false),
        Ok(_) => match rustix::fs::seek(file, SeekFrom::Hole(pos)) {
            Ok(h) if h > pos => run(h, true),
            _ => run(size, true),
        },
        // No data after pos: a hole to the end.
        Err(rustix::io::Errno::NXIO) => run(size, false),
        // No SEEK_DATA support: everything is data.
        Err(_) => run(size, true),
    }
}

/// Scans from `from` (<= `pos` < `size`) until the run containing `pos` is
/// found, which is the last run returned. After [`MAX_SCAN_STEPS`] seek
/// pairs it jumps to `pos`. A blocking call: run it in the thread pool.
pub(super) fn scan(file: &File, size: u64, from: u64, pos: u64) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut cur = from;
    loop {
        if runs.len() == MAX_SCAN_STEPS && cur < pos {
            cur = pos;
        }
        let r = run_from(file, size, cur);
        runs.push(r);
        if r.end > pos {
            return runs;
        }
        cur = r.end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, end: u64, data: bool) -> Run {
        Run { start, end, data }
    }

    fn all(m: &DataMap) -> Vec<Run> {
        m.lock().runs.values().copied().collect()
    }

    fn gens(m: &DataMap) -> Generations {
        m.scan_origin(0).1
    }

    #[test]
    fn insert_merges_touching_runs_of_a_kind() {
        let m = DataMap::default();
        m.insert(&[run(0, 10, true), run(10, 20, false)], gens(&m));
        m.insert(&[run(20, 30, false), run(30, 40, true)], gens(&m));
        assert_eq!(
            all(&m),
            [run(0, 10, true), run(10, 30, false), run(30, 40, true)]
        );
        assert_eq!(m.lookup(25), Some(run(10, 30, false)));
        assert_eq!(m.lookup(40), None);
        assert_eq!(m.scan_origin(45).0, 40);
    }

    #[test]
    fn a_newer_scan_supersedes_what_it_overlaps() {
        let m = DataMap::default();
        m.insert(&[run(0, 100, false)], gens(&m));
        m.insert(&[run(40, 60, true)], gens(&m));
        assert_eq!(
            all(&m),
            [run(0, 40, false), run(40, 60, true), run(60, 100, false)]
        );
    }

    #[test]
    fn a_write_keeps_data_runs_and_cuts_holes_around_it() {
        let m = DataMap::default();
        let g = 4 * WRITE_GRAIN;
        m.insert(&[run(0, g, true), run(g, 3 * g, false)], gens(&m));
        m.wrote(10, 4096);
        assert_eq!(m.lookup(0), Some(run(0, g, true)));
        m.wrote(g + g / 2 + 5, 100);
        let w = g + g / 2 + 5;
        assert_eq!(m.lookup(w), Some(run(w, w + 100, true)));
        let lo = w / WRITE_GRAIN * WRITE_GRAIN;
        let hi = (w + 100).div_ceil(WRITE_GRAIN) * WRITE_GRAIN;
        assert_eq!(m.lookup(g), Some(run(g, lo, false)));
        assert_eq!(m.lookup(lo), None);
        assert_eq!(m.lookup(hi), Some(run(hi, 3 * g, false)));
    }

    #[test]
    fn a_discard_cuts_every_run_it_overlaps() {
        let m = DataMap::default();
        m.insert(&[run(0, 100, true), run(100, 200, false)], gens(&m));
        m.discarded(50, 100);
        assert_eq!(all(&m), [run(0, 50, true), run(150, 200, false)]);
    }

    #[test]
    fn a_scan_overtaken_by_requests_keeps_only_what_still_holds() {
        let m = DataMap::default();
        let g = gens(&m);
        m.wrote(5 * WRITE_GRAIN, 10);
        m.insert(&[run(0, 10, true), run(10, 20, false)], g);
        assert_eq!(m.lookup(0), Some(run(0, 10, true)));
        assert_eq!(m.lookup(15), None, "a hole found before a write");
        let g = gens(&m);
        m.discarded(1000, 10);
        m.insert(&[run(30, 40, true)], g);
        assert_eq!(m.lookup(35), None, "anything found before a trim");
    }

    #[test]
    fn the_map_stays_bounded() {
        let m = DataMap::default();
        for i in 0..(MAX_RUNS as u64 + 10) {
            m.insert(&[run(i * 10, i * 10 + 5, true)], gens(&m));
        }
        assert_eq!(all(&m).len(), MAX_RUNS);
    }
}
