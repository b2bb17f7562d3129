//! The README is the front door and `docs/` holds the rest, by reader: the
//! README opens with the title and the two commands, stays short, and leads
//! to every page of `docs/`; no relative link in any of them leads nowhere
//! (the .deb ships README.md and docs/ side by side, so these links work
//! there too). The snippets the pages show are checked where they are
//! used: `cri::snippets_agree`, `install::configuration_snippets_and_install_agree`,
//! `critest::gvisor_limits_are_in_docs_testing`. Needs no daemon.

use std::fs;
use std::path::{Path, PathBuf};

use oomguard_integration::harness::repo;

/// Past this the README stops being a page one reads before trying the
/// thing; what does not fit belongs in `docs/` (issue 18).
const README_MAX_LINES: usize = 250;

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md and every docs/*.md.
fn pages() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ has no page");
    let mut all = vec![repo().join("README.md")];
    all.extend(docs);
    all
}

/// The page's lines outside fenced code blocks: a `[x](y)` or `# x` inside a
/// shell or TOML snippet is no link and no heading.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The targets of the page's inline links, outside code (fenced or in
/// backticks, which may run over a line break).
fn links(text: &str) -> Vec<String> {
    let prose = prose(text).join("\n");
    let mut out = Vec::new();
    for outside_code in prose.split('`').step_by(2) {
        let mut rest = outside_code;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').expect("a link's target ends with ')'");
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// The anchors GitHub gives the page's headings: lowercased, spaces to '-',
/// punctuation other than '-' and '_' dropped.
fn anchors(text: &str) -> Vec<String> {
    prose(text)
        .into_iter()
        .filter_map(|l| {
            let title = l.trim_start_matches('#');
            (title.len() < l.len() && title.starts_with(' ')).then(|| title.trim())
        })
        .map(|title| {
            title
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// `make demo` and `make test` are what a newcomer runs first, so they stay
/// the first thing on the page.
#[test]
fn readme_opens_with_the_two_commands() {
    let readme = read(&repo().join("README.md"));
    let head: Vec<&str> = readme.lines().take(6).collect();
    assert_eq!(head[..3], ["# oomguard", "", "```sh"], "{head:#?}");
    assert!(head[3].starts_with("make demo "), "{head:#?}");
    assert!(head[4].starts_with("make test "), "{head:#?}");
    assert_eq!(head[5], "```", "{head:#?}");
}

#[test]
fn readme_is_short() {
    let lines = read(&repo().join("README.md")).lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the detail to docs/"
    );
}

#[test]
fn readme_links_every_page_of_docs() {
    let readme_links = links(&read(&repo().join("README.md")));
    for page in &pages()[1..] {
        let name = format!("docs/{}", page.file_name().unwrap().to_string_lossy());
        assert!(
            readme_links
                .iter()
                .any(|l| l.split('#').next() == Some(&name)),
            "README.md does not link {name}"
        );
    }
}

#[test]
fn relative_links_lead_somewhere() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().unwrap();
        for link in links(&text) {
            if ["http://", "https://", "mailto:"]
                .iter()
                .any(|s| link.starts_with(s))
            {
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            let name = page.strip_prefix(repo()).unwrap().display().to_string();
            if !target.exists() {
                broken.push(format!("{name}: {link}: no such file"));
            } else if !anchor.is_empty() && !anchors(&read(&target)).iter().any(|a| a == anchor) {
                broken.push(format!("{name}: {link}: no such heading"));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn anchors_are_githubs() {
    let text = "# oomguard\n## `install` and `uninstall`\n```sh\n# not a heading\n```\n\
                ## A container's own memory limit in a pod\n#not a heading\n";
    assert_eq!(
        anchors(text),
        [
            "oomguard",
            "install-and-uninstall",
            "a-containers-own-memory-limit-in-a-pod"
        ]
    );
    assert_eq!(
        links("[a](b.md) `[c](d.md)` [e](f.md#g)\n```\n[h](i.md)\n```\n"),
        ["b.md", "f.md#g"]
    );
}
