//! serve's memory under `tend bench load`: does it still grow once warmed up?
//!
//! serve's VmRSS climbs for the first minutes of the load while bounded structures fill: the
//! watch window (16 MiB of recent changes), the controllers' caches, redb's page cache, the
//! buffers of ~400 connections, and the malloc heap reaching its steady-state layout. Measured
//! on the release build (`tend bench load`, 100 agents): ~43-49 MiB at the start, ~66-69 MiB
//! at 2 min. So the check compares the minute right after a 2-minute warm-up with the last
//! minute of the run, and reports the whole series so that a plateau (or its absence) can be
//! seen. Over longer runs redb's page cache (capped at 16 MiB) keeps filling as the store
//! file grows with Events until their TTL (`--event-ttl`, 1 h): ~0.2 MiB/min, which this
//! check reads as growth after a few minutes; with a 10-min TTL serve levels off.

/// The first part of a run not compared: the structures above filling.
pub const WARMUP_SECONDS: f64 = 120.0;
/// The length of the baseline window (right after the warm-up) and of the final one.
pub const WINDOW_SECONDS: f64 = 60.0;
/// "No growth of serve's memory": the last window's mean VmRSS at most this fraction above
/// the baseline's. Runs of the release build vary by ~2% between windows once warmed up; a
/// leak of 3 MiB a minute (about 130 bytes per request at ~400 requests a second) goes over
/// it within 5 minutes, a slower one in a longer run (the slope shows it too).
pub const GROWTH_GOAL: f64 = 0.05;
/// The interval of the series the report prints.
pub const SERIES_SECONDS: f64 = 30.0;

/// serve's VmRSS over a run, and how it moved after the warm-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RssGrowth {
    /// Every sample: (seconds since the load started, MiB).
    pub samples: Vec<(f64, f64)>,
    /// The warm-up and the windows used, in seconds (shorter for short runs).
    pub warmup_seconds: f64,
    pub window_seconds: f64,
    /// The first sample.
    pub start_mib: f64,
    /// The mean of `[warmup, warmup + window)`.
    pub baseline_mib: f64,
    /// The mean of the last `window` seconds.
    pub end_mib: f64,
    pub max_mib: f64,
    /// Least-squares slope of the samples after the warm-up, MiB per minute.
    pub slope_mib_per_min: f64,
}

impl RssGrowth {
    /// Analyses the samples of a run of `duration` seconds. A run shorter than 5 minutes keeps
    /// the same proportions: a warm-up of 40% of it, windows of 20%.
    pub fn of(samples: Vec<(f64, f64)>, duration: f64) -> RssGrowth {
        let warmup = WARMUP_SECONDS.min(duration * 0.4);
        let window = WINDOW_SECONDS.min(duration * 0.2);
        let after_warmup: Vec<(f64, f64)> = samples
            .iter()
            .copied()
            .filter(|(t, _)| *t >= warmup)
            .collect();
        RssGrowth {
            warmup_seconds: warmup,
            window_seconds: window,
            start_mib: samples.first().map_or(0.0, |s| s.1),
            baseline_mib: mean_between(&samples, warmup, warmup + window),
            // The sampler's last tick may land a little after the end.
            end_mib: mean_between(&samples, duration - window, duration + 1.0),
            max_mib: samples.iter().map(|s| s.1).fold(0.0, f64::max),
            slope_mib_per_min: slope_per_minute(&after_warmup),
            samples,
        }
    }

    /// How much the last window is above the baseline, as a fraction of the baseline.
    pub fn growth(&self) -> f64 {
        if self.baseline_mib <= 0.0 {
            return 0.0;
        }
        (self.end_mib - self.baseline_mib) / self.baseline_mib
    }

    /// Whether serve's memory grew after the warm-up by more than `tolerance` (a fraction).
    /// A run without samples in either window cannot show growth: see `has_windows`.
    pub fn grew_more_than(&self, tolerance: f64) -> bool {
        self.growth() > tolerance
    }

    /// Whether both windows have samples (the run was long enough to judge).
    pub fn has_windows(&self) -> bool {
        self.baseline_mib > 0.0 && self.end_mib > 0.0
    }

    /// The mean VmRSS of each `every` seconds: (the interval's start, MiB).
    pub fn series(&self, every: f64) -> Vec<(f64, f64)> {
        let Some(last) = self.samples.last().map(|s| s.0) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut from = 0.0;
        while from <= last {
            let mean = mean_between(&self.samples, from, from + every);
            if mean > 0.0 {
                out.push((from, mean));
            }
            from += every;
        }
        out
    }

    /// One line: the series per `SERIES_SECONDS`, e.g. `0 s 52.1, 30 s 71.0, ...`.
    pub fn series_line(&self) -> String {
        self.series(SERIES_SECONDS)
            .iter()
            .map(|(t, mib)| format!("{t:.0} s {mib:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The mean of the samples in `[from, to)` seconds; 0 when there are none.
pub fn mean_between(samples: &[(f64, f64)], from: f64, to: f64) -> f64 {
    let window: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, v)| *v)
        .collect();
    if window.is_empty() {
        return 0.0;
    }
    window.iter().sum::<f64>() / window.len() as f64
}

/// Least-squares slope of `samples` (seconds, MiB), in MiB per minute.
pub fn slope_per_minute(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_v = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let cov: f64 = samples
        .iter()
        .map(|(t, v)| (t - mean_t) * (v - mean_v))
        .sum();
    let var: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    cov / var * 60.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples every 5 s for `seconds`, of `f(t)`.
    fn run(seconds: u32, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..=seconds / 5)
            .map(|i| {
                let t = f64::from(i * 5);
                (t, f(t))
            })
            .collect()
    }

    /// The shape measured: a climb for ~2 minutes, then flat with some noise.
    fn warm_then_flat(t: f64) -> f64 {
        let noise = if (t as u64 / 5).is_multiple_of(2) {
            0.5
        } else {
            -0.5
        };
        45.0 + 41.0 * (t / 120.0).min(1.0) + noise
    }

    #[test]
    fn a_warm_up_then_a_plateau_is_no_growth() {
        let g = RssGrowth::of(run(300, warm_then_flat), 300.0);
        assert_eq!((g.warmup_seconds, g.window_seconds), (120.0, 60.0));
        assert!((g.baseline_mib - 86.0).abs() < 0.2, "{g:?}");
        assert!((g.end_mib - 86.0).abs() < 0.2, "{g:?}");
        assert!(!g.grew_more_than(GROWTH_GOAL));
        assert!(g.slope_mib_per_min.abs() < 0.2, "{g:?}");
        assert_eq!(g.start_mib, 45.5);
        // The old check (last minute against the first) called the warm-up growth.
        assert!(mean_between(&g.samples, 240.0, 301.0) > 1.1 * mean_between(&g.samples, 0.0, 60.0));
    }

    #[test]
    fn a_leak_after_the_warm_up_is_growth() {
        // 3 MiB a minute on top of the measured shape.
        let leak = |t: f64| warm_then_flat(t) + 3.0 * t / 60.0;
        let g = RssGrowth::of(run(300, leak), 300.0);
        assert!(g.grew_more_than(GROWTH_GOAL), "{g:?}");
        assert!((g.slope_mib_per_min - 3.0).abs() < 0.2, "{g:?}");
        // 1 MiB a minute stays within the goal in 5 minutes (the slope still shows it), not
        // in 15.
        let slow = |t: f64| warm_then_flat(t) + t / 60.0;
        let g = RssGrowth::of(run(300, slow), 300.0);
        assert!(!g.grew_more_than(GROWTH_GOAL), "{g:?}");
        assert!(g.slope_mib_per_min > 0.8, "{g:?}");
        let g = RssGrowth::of(run(900, slow), 900.0);
        assert!(g.grew_more_than(GROWTH_GOAL), "{g:?}");
    }

    #[test]
    fn short_runs_keep_the_proportions() {
        let g = RssGrowth::of(run(60, |_| 40.0), 60.0);
        assert_eq!((g.warmup_seconds, g.window_seconds), (24.0, 12.0));
        assert!(g.has_windows());
        assert_eq!(g.growth(), 0.0);
        let empty = RssGrowth::of(Vec::new(), 300.0);
        assert!(!empty.has_windows());
        assert!(!empty.grew_more_than(0.0));
        assert!(empty.series(30.0).is_empty());
    }

    #[test]
    fn the_series_is_the_mean_of_each_interval() {
        let g = RssGrowth::of(run(60, |t| t), 60.0);
        // Samples 0..=60 every 5 s: [0, 30) holds 0..25, [30, 60) 30..55, [60, 90) 60.
        assert_eq!(
            g.series(30.0),
            vec![(0.0, 12.5), (30.0, 42.5), (60.0, 60.0)]
        );
        assert_eq!(g.series_line(), "0 s 12.5, 30 s 42.5, 60 s 60.0");
        assert_eq!(g.max_mib, 60.0);
    }

    #[test]
    fn slope_is_mib_per_minute() {
        let flat: Vec<(f64, f64)> = (0..12).map(|i| (f64::from(i) * 5.0, 40.0)).collect();
        assert_eq!(slope_per_minute(&flat), 0.0);
        let growing: Vec<(f64, f64)> = (0..12)
            .map(|i| (f64::from(i) * 5.0, 40.0 + f64::from(i) * 0.5))
            .collect();
        assert!((slope_per_minute(&growing) - 6.0).abs() < 1e-9);
        assert_eq!(mean_between(&flat, 0.0, 30.0), 40.0);
        assert_eq!(mean_between(&flat, 100.0, 130.0), 0.0);
    }
}
