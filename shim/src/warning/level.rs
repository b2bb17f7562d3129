//! The warning's level: a share of the container's memory limit, from the
//! oomguard TOML (`memory_warning`) or the annotation
//! `io.oomguard.memory-warning`; and the episode it fires once in.

/// Per-pod (or container) override: `"90%"`, `"0.9"` or `"off"`.
pub const ANNOTATION: &str = "io.oomguard.memory-warning";
/// The level when nothing says otherwise.
pub const DEFAULT: Level = Level::Share(0.90);
/// cgroup v2: the share of each 2 s window some task may stall on memory
/// (PSI) before it warns (`memory_warning_stall`).
pub const STALL_ANNOTATION: &str = "io.oomguard.memory-warning-stall";
pub const DEFAULT_STALL: Level = Level::Share(0.10);
/// How far below the level the working set must fall before the next climb
/// is a new episode (a share of the limit).
pub const HYSTERESIS: f64 = 0.10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    Off,
    /// A share of the limit in (0, 1].
    Share(f64),
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Off => f.write_str("off"),
            Level::Share(s) => write!(f, "{}%", (s * 100.0).round()),
        }
    }
}

/// `"90%"`, `"0.9"` or `"off"`; anything else (`"150%"`, `"-1"`, `"abc"`)
/// says why not.
pub fn parse(value: &str) -> Result<Level, String> {
    let v = value.trim();
    if v == "off" {
        return Ok(Level::Off);
    }
    let share = match v.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => v.parse::<f64>(),
    }
    .map_err(|_| format!("{value:?} is not a share of the limit (\"90%\", \"0.9\") or \"off\""))?;
    if !(share > 0.0 && share <= 1.0) {
        return Err(format!(
            "{value:?} is not a share of the limit between 0% (excluded) and 100%"
        ));
    }
    Ok(Level::Share(share))
}

/// The level for a container: the annotation over the config's; a
/// malformed annotation comes back as an error beside the config's level.
pub fn for_spec(spec: &serde_json::Value, config: Level) -> (Level, Option<String>) {
    for_spec_key(spec, ANNOTATION, config)
}

/// The same for the annotation `key`.
pub fn for_spec_key(spec: &serde_json::Value, key: &str, config: Level) -> (Level, Option<String>) {
    let Some(v) = spec.pointer("/annotations").and_then(|a| a.get(key)) else {
        return (config, None);
    };
    match v
        .as_str()
        .ok_or_else(|| format!("{v} is not a string"))
        .and_then(parse)
    {
        Ok(l) => (l, None),
        Err(e) => (
            config,
            Some(format!("annotation {key}: {e}; using {config}")),
        ),
    }
}

/// One container's warning state: it fires once when the working set
/// reaches the level, and again only after it fell below the re-arm mark.
#[derive(Debug, Clone, Copy)]
pub struct Episode {
    warn_at: u64,
    rearm_below: u64,
    fired: bool,
}

impl Episode {
    pub fn new(limit: u64, share: f64) -> Episode {
        let at = |s: f64| (limit as f64 * s.clamp(0.0, 1.0)) as u64;
        Episode {
            warn_at: at(share),
            rearm_below: at(share - HYSTERESIS),
            fired: false,
        }
    }

    /// The usage a kernel notification should be set at next: the level
    /// while armed, the re-arm mark after firing.
    pub fn next_crossing(&self) -> u64 {
        if self.fired {
            self.rearm_below
        } else {
            self.warn_at
        }
    }

    /// Feeds one reading of the working set; true when it starts an episode.
    pub fn observe(&mut self, working_set: u64) -> bool {
        if !self.fired && working_set >= self.warn_at {
            self.fired = true;
            return true;
        }
        if self.fired && working_set < self.rearm_below {
            self.fired = false;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_as_operators_write_them() {
        assert_eq!(parse("90%"), Ok(Level::Share(0.9)));
        assert_eq!(parse(" 75 % "), Ok(Level::Share(0.75)));
        assert_eq!(parse("0.8"), Ok(Level::Share(0.8)));
        assert_eq!(parse("100%"), Ok(Level::Share(1.0)));
        assert_eq!(parse("off"), Ok(Level::Off));
        for bad in ["150%", "-1", "abc", "0%", "", "1.5", "NaN", "inf"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_annotation_wins_and_a_bad_one_is_named() {
        let spec = |v: &str| serde_json::json!({"annotations": {ANNOTATION: v}});
        assert_eq!(for_spec(&spec("off"), DEFAULT), (Level::Off, None));
        assert_eq!(for_spec(&serde_json::json!({}), DEFAULT), (DEFAULT, None));
        let (l, e) = for_spec(&spec("150%"), DEFAULT);
        assert_eq!(l, DEFAULT);
        let e = e.unwrap();
        assert!(
            e.starts_with("annotation io.oomguard.memory-warning: \"150%\""),
            "{e}"
        );
        assert!(e.ends_with("using 90%"), "{e}");
    }

    #[test]
    fn once_per_episode() {
        let mib = 1 << 20;
        let mut e = Episode::new(100 * mib, 0.9);
        assert_eq!(e.next_crossing(), 90 * mib);
        // Idle, then at 50%: nothing.
        assert!(!e.observe(mib));
        assert!(!e.observe(50 * mib));
        // Climbs to 95% and holds: once.
        assert!(e.observe(95 * mib));
        assert_eq!(e.next_crossing(), 80 * mib);
        for _ in 0..5 {
            assert!(!e.observe(95 * mib));
        }
        // Dips inside the hysteresis band: still the same episode.
        assert!(!e.observe(85 * mib));
        assert!(!e.observe(92 * mib));
        // Falls below and climbs again: a second one.
        assert!(!e.observe(40 * mib));
        assert_eq!(e.next_crossing(), 90 * mib);
        assert!(e.observe(96 * mib));
    }
}
