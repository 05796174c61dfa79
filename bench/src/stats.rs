//! Latency percentiles and result cells.

/// Latency summary of one cell, nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    /// Summarises samples (sorts them in place); `None` if there are none.
    pub fn from_samples(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
        Some(Self {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// The `p` quantile (0 to 1) of `sorted` (ascending), by the nearest rank
/// as [`Latency::from_samples`] takes it; 0 if empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted[i]
}

/// One measured cell of the results table.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// What was measured.
    pub workload: String,
    /// Payload bytes per operation.
    pub payload: usize,
    /// Whether each operation moves its payload (copies it in or out). An
    /// operation that does not (a view, an acknowledgement) is O(1): its
    /// table row has operations per second and no GB/s.
    pub copies: bool,
    /// The bound of this cell, payload bytes per second: for an append,
    /// the memory bound measured interleaved with it (see `bound.rs`); for
    /// a channel row, the bare ring of the same size in the same run (see
    /// `bare_ring.rs`).
    pub bound: Option<f64>,
    /// Producer threads.
    pub threads: usize,
    /// `cold` (fresh store), `steady` (reclaiming while running) or `-`.
    pub state: &'static str,
    /// Operations done.
    pub ops: u64,
    /// Seconds they took.
    pub secs: f64,
    /// Per-operation latency, if measured.
    pub latency: Option<Latency>,
    /// Anything worth saying (resident memory, caveats).
    pub note: String,
}

impl Cell {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Throughput as a fraction of the cell's bound, if it has one.
    pub fn of_bound(&self) -> Option<f64> {
        let b = self.bound.filter(|b| *b > 0.0)?;
        Some(self.ops_per_sec() * self.payload as f64 / b)
    }

    /// Payload gigabytes (1e9 bytes) per second; `None` for an operation
    /// that moves no payload.
    pub fn gb_per_sec(&self) -> Option<f64> {
        self.copies
            .then(|| self.ops_per_sec() * self.payload as f64 / 1e9)
    }
}

/// Human form of a byte count used in tables: 64 B, 4 KiB, 1 MiB.
pub fn size_label(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

/// A rate with a unit prefix: "1.23 M", "45.6 k", "789".
pub fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn nanos(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.2} ms", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.2} us", n as f64 / 1e3)
    } else {
        format!("{n} ns")
    }
}

/// The results as a Markdown table.
pub fn markdown_table(cells: &[Cell]) -> String {
    let mut out = String::from(
        "| workload | payload | threads | state | ops/s | GB/s | of bound | p50 | p99 | max | note |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for c in cells {
        let (p50, p99, max) = match c.latency {
            Some(l) => (nanos(l.p50), nanos(l.p99), nanos(l.max)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.workload,
            size_label(c.payload),
            c.threads,
            c.state,
            rate(c.ops_per_sec()),
            c.gb_per_sec()
                .map_or_else(|| "-".to_owned(), |g| format!("{g:.2}")),
            c.of_bound()
                .map_or_else(|| "-".to_owned(), |r| format!("{:.0} %", r * 100.0)),
            p50,
            p99,
            max,
            c.note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_labels() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let l = Latency::from_samples(&mut v).unwrap();
        assert_eq!((l.p50, l.p99, l.max), (51, 99, 100));
        assert_eq!(Latency::from_samples(&mut []), None);
        assert_eq!(percentile(&v, 0.999), 100);
        assert_eq!(percentile(&v, 0.5), l.p50);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        let c = Cell {
            workload: "x".into(),
            payload: 1000,
            copies: true,
            bound: None,
            threads: 1,
            state: "-",
            ops: 2_000_000,
            secs: 2.0,
            latency: None,
            note: String::new(),
        };
        assert_eq!(c.ops_per_sec(), 1e6);
        assert_eq!(c.gb_per_sec(), Some(1.0));
        assert!(markdown_table(std::slice::from_ref(&c))
            .contains("| x | 1000 B | 1 | - | 1.00 M | 1.00 | - |"));
        let bounded = Cell {
            bound: Some(4e9),
            ..c.clone()
        };
        assert_eq!(bounded.of_bound(), Some(0.25));
        assert!(markdown_table(&[bounded]).contains("| 1.00 M | 1.00 | 25 % |"));
        let o1 = Cell { copies: false, ..c };
        assert_eq!(o1.gb_per_sec(), None);
        assert!(markdown_table(&[o1]).contains("| x | 1000 B | 1 | - | 1.00 M | - |"));
    }
}
