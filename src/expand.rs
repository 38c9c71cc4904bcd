//! Expands a collect entry's glob into the files it names, with a bounded walk: each
//! real directory is visited once (by device and inode, so `ln -s . loop` under a `**`
//! cannot make it loop or explode), at most [`MAX_VISITS`] directory entries are looked
//! at per pattern, and only regular files are returned (a FIFO or socket matched is
//! never named, so nothing ever blocks on one). Directories are only walked where the
//! pattern can still match below them.
//!
//! A matched file may be a symlink: the tailer checks the real path of the file it
//! opened against the allow-list ([`crate::tail::access`]). Nothing here logs.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Directory entries looked at per pattern and expansion, at most.
pub const MAX_VISITS: usize = 100_000;

/// What a pattern named.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Regular files (or symlinks to one) the pattern matches, sorted.
    pub files: Vec<PathBuf>,
    /// The walk stopped at its budget: `files` may miss matches.
    pub truncated: bool,
}

fn is_meta(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// `(literal directory the walk starts in, pattern components below it)`.
fn split_base(pattern: &str) -> (PathBuf, Vec<&str>) {
    let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let first_meta = comps.iter().position(|c| is_meta(c)).unwrap_or(comps.len());
    let mut base = PathBuf::from(if pattern.starts_with('/') { "/" } else { "." });
    for c in &comps[..first_meta] {
        base.push(c);
    }
    (base, comps[first_meta..].to_vec())
}

/// Whether a directory at `depth` components below the base, named `name`, can hold
/// matches of `rest` (the pattern components below the base).
fn may_descend(rest: &[&str], depth: usize, name: &str) -> bool {
    match rest.get(depth) {
        // Everything below a `**` may match.
        _ if rest[..depth.min(rest.len())].contains(&"**") => true,
        Some(&"**") => true,
        // The last component names files, not directories to enter.
        Some(_) if depth + 1 >= rest.len() => false,
        Some(c) => glob::Pattern::new(c).is_ok_and(|p| p.matches(name)),
        None => false,
    }
}

/// Expands `pattern` (an absolute glob; `**` crosses directories) looking at no more
/// than `budget` directory entries.
pub fn expand(pattern: &str, budget: usize) -> Result<Expansion, glob::PatternError> {
    let full = glob::Pattern::new(pattern)?;
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let (base, rest) = split_base(pattern);
    let mut out = Expansion::default();
    if rest.is_empty() {
        if fs::metadata(&base).is_ok_and(|m| m.is_file()) {
            out.files.push(base);
        }
        return Ok(out);
    }
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let Ok(m) = fs::metadata(&base) else {
        return Ok(out);
    };
    seen.insert((m.dev(), m.ino()));
    // A symlink to a directory is walked only when it leads back inside the tree the
    // pattern starts in: `ln -s / root` under a `**` must not walk the whole host.
    let base_real = fs::canonicalize(&base).unwrap_or_else(|_| base.clone());
    let mut stack: Vec<(PathBuf, usize)> = vec![(base, 0)];
    let mut visits = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visits += 1;
            if visits > budget {
                out.truncated = true;
                out.files.sort();
                return Ok(out);
            }
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            // Follows a symlink: a link to a file may match, a link to a directory may
            // be walked (once per real directory).
            let meta = if kind.is_symlink() {
                match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(_) => continue,
                }
            } else {
                match entry.metadata() {
                    Ok(m) => m,
                    Err(_) => continue,
                }
            };
            if meta.is_file() {
                if path.to_str().is_some_and(|p| full.matches_with(p, opts)) {
                    out.files.push(path);
                }
            } else if meta.is_dir() {
                let name = entry.file_name();
                let may = name.to_str().is_some_and(|n| may_descend(&rest, depth, n));
                let inside = !kind.is_symlink()
                    || fs::canonicalize(&path).is_ok_and(|r| r.starts_with(&base_real));
                if may && inside && seen.insert((meta.dev(), meta.ino())) {
                    stack.push((path, depth + 1));
                }
            }
        }
    }
    out.files.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn names(e: &Expansion, root: &Path) -> Vec<String> {
        e.files
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_walk_starts_below_the_literal_part() {
        assert_eq!(
            split_base("/var/log/app/*.log"),
            (PathBuf::from("/var/log/app"), vec!["*.log"])
        );
        assert_eq!(
            split_base("/var/log/**/x-?.log"),
            (PathBuf::from("/var/log"), vec!["**", "x-?.log"])
        );
        assert!(may_descend(&["*", "*.log"], 0, "app"));
        assert!(!may_descend(&["a*", "*.log"], 0, "b"));
        assert!(!may_descend(&["*.log"], 0, "dir"));
        assert!(may_descend(&["**", "*.log"], 5, "deep"));
    }

    #[test]
    fn matches_like_glob_and_only_regular_files() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        for f in ["x.log", "a/y.log", "a/b/z.log", "a/b/z.txt"] {
            fs::write(r.join(f), "1\n").unwrap();
        }
        fs::create_dir(r.join("dir.log")).unwrap();
        let fifo =
            std::ffi::CString::new(r.join("a/fifo.log").to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo on a path in our own temp dir.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let all = expand(&format!("{}/**/*.log", r.display()), MAX_VISITS).unwrap();
        assert_eq!(names(&all, r), ["a/b/z.log", "a/y.log", "x.log"]);
        assert!(!all.truncated);
        let one = expand(&format!("{}/*/*.log", r.display()), MAX_VISITS).unwrap();
        assert_eq!(names(&one, r), ["a/y.log"]);
        let top = expand(&format!("{}/*.log", r.display()), MAX_VISITS).unwrap();
        assert_eq!(names(&top, r), ["x.log"]);
        let none = expand(&format!("{}/nowhere/*.log", r.display()), MAX_VISITS).unwrap();
        assert_eq!(none, Expansion::default());
    }

    #[test]
    fn symlink_loops_are_walked_once_and_the_budget_holds() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir(r.join("sub")).unwrap();
        fs::write(r.join("sub/app.log"), "1\n").unwrap();
        // Loops that would make glob's `**` walk 2^40 paths.
        std::os::unix::fs::symlink(".", r.join("loop")).unwrap();
        std::os::unix::fs::symlink("..", r.join("sub/up")).unwrap();
        std::os::unix::fs::symlink(".", r.join("sub/again")).unwrap();
        // Out of the tree: never walked (the root of the host, a sibling directory).
        std::os::unix::fs::symlink("/", r.join("sub/root")).unwrap();
        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join("outside.log"), "1\n").unwrap();
        std::os::unix::fs::symlink(other.path(), r.join("elsewhere")).unwrap();
        let e = expand(&format!("{}/**/*.log", r.display()), MAX_VISITS).unwrap();
        assert_eq!(names(&e, r), ["sub/app.log"]);
        assert!(!e.truncated);
        for i in 0..50 {
            fs::write(r.join(format!("f{i}.log")), "1\n").unwrap();
        }
        let small = expand(&format!("{}/**/*.log", r.display()), 10).unwrap();
        assert!(small.truncated);
        assert!(small.files.len() <= 10);
    }
}
