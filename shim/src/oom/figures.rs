//! A memcg's usage, limit and peak, as an OOM report gives them: each
//! figure on its own (one the kernel does not keep, or that cannot be read,
//! is unknown, not 0), and "no limit" as no limit rather than a huge number.

use std::path::Path;

use log::debug;

use super::memcg::Memcg;

/// A memcg's figures in bytes (`None`: unknown, or for `limit`, none set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryFigures {
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub peak: Option<u64>,
}

/// cgroup v1 shows "no limit" as the page counter's maximum rounded to a
/// page (9223372036854771712 on x86_64); any value this high is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// Reads one figure file: `Ok(None)` for a `limit` file that says "no
/// limit" (v2 "max", v1 a huge number), an error for one that is not a
/// byte count.
pub fn parse_figure(text: &str, limit: bool) -> Result<Option<u64>, String> {
    let t = text.trim();
    if limit && t == "max" {
        return Ok(None);
    }
    let n: u64 = t
        .parse()
        .map_err(|_| format!("not a byte count: {}", super::memcg::excerpt(t)))?;
    Ok((!limit || n < V1_UNLIMITED).then_some(n))
}

impl MemoryFigures {
    /// Reads the figures of `memcg` now. Each missing or unreadable file
    /// leaves its figure unknown (v2's `memory.peak` exists from Linux
    /// 5.19 on).
    pub fn read(memcg: &Memcg) -> MemoryFigures {
        let (usage, limit, peak) = match memcg {
            Memcg::V1(_) => (
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
                "memory.max_usage_in_bytes",
            ),
            Memcg::V2(_) => ("memory.current", "memory.max", "memory.peak"),
        };
        let dir = memcg.path();
        MemoryFigures {
            usage: figure(dir, usage, false),
            limit: figure(dir, limit, true),
            peak: figure(dir, peak, false),
        }
    }
}

fn figure(dir: &Path, name: &str, limit: bool) -> Option<u64> {
    let file = dir.join(name);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            debug!("oom report: {}: {e}", file.display());
            return None;
        }
    };
    parse_figure(&text, limit).unwrap_or_else(|e| {
        debug!("oom report: {}: {e}", file.display());
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_and_no_limit() {
        assert_eq!(parse_figure("33554432\n", false), Ok(Some(33554432)));
        assert_eq!(parse_figure("33554432\n", true), Ok(Some(33554432)));
        assert_eq!(parse_figure("max\n", true), Ok(None));
        assert_eq!(parse_figure("9223372036854771712\n", true), Ok(None));
        // A usage is never "no limit", however large.
        assert_eq!(
            parse_figure("9223372036854771712\n", false),
            Ok(Some(9223372036854771712))
        );
        assert!(parse_figure("max\n", false).is_err());
        assert!(parse_figure("", true).is_err());
        assert!(parse_figure("-1", true).is_err());
    }

    #[test]
    fn a_missing_file_is_unknown() {
        let dir = std::env::temp_dir().join(format!("oomguard-figures-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "1000\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        let f = MemoryFigures::read(&Memcg::V2(dir.clone()));
        assert_eq!(
            f,
            MemoryFigures {
                usage: Some(1000),
                limit: None,
                peak: None
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
