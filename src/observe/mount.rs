//! `doctor --shared`: is the file system under `.coordination/` one on
//! which the protocol is safe from several hosts (`spec` 6.6 and 17,
//! README "Several machines")? It reads the mount's type and options from
//! `/proc/self/mountinfo` (proc(5)), and for a GlusterFS FUSE mount the
//! options of the `glusterfs` client process that serves it, and compares
//! them with the options known to make each file system coherent: a write
//! made under the lock through one client is seen, whole and fresh, by the
//! next lock holder through another, and `flock` excludes across clients.

use serde::Serialize;
use std::path::{Path, PathBuf};

/// What the probe concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A local file system: every process on this host sees one page cache.
    Local,
    /// A shared file system with options known to be coherent.
    Coherent,
    /// A shared file system with options known not to be (or one that is
    /// never safe, such as sshfs or SMB, whose locks do not cross clients).
    NotCoherent,
    /// A shared file system this version knows nothing about.
    Unknown,
}

/// The probe's report.
#[derive(Debug, Clone, Serialize)]
pub struct MountReport {
    /// The coordination directory.
    pub dir: PathBuf,
    /// Its mount point.
    pub mount_point: Option<String>,
    /// The file system type as in mountinfo (`ext4`, `fuse.glusterfs`,
    /// `nfs4`, `ceph`...).
    pub fs_type: Option<String>,
    /// The mount's source (`host:/volume`).
    pub source: Option<String>,
    /// The options that were checked (mount and super options; for
    /// GlusterFS the client's command line).
    pub options: Vec<String>,
    /// The conclusion.
    pub verdict: Verdict,
    /// What is wrong and what fixes it; empty when nothing is.
    pub advice: Vec<String>,
}

struct MountInfo {
    mount_point: String,
    fs_type: String,
    source: String,
    options: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mountinfo line whose mount point is the longest prefix of `dir`.
fn mount_of(dir: &Path, mountinfo: &str) -> Option<MountInfo> {
    let mut best: Option<MountInfo> = None;
    for line in mountinfo.lines() {
        let (pre, post) = line.split_once(" - ")?;
        let f: Vec<&str> = pre.split(' ').collect();
        let g: Vec<&str> = post.split(' ').collect();
        if f.len() < 6 || g.len() < 3 {
            continue;
        }
        let mp = unescape(f[4]);
        if !dir.starts_with(&mp) {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|b| b.mount_point.len() > mp.len())
        {
            continue;
        }
        let mut options: Vec<String> = f[5].split(',').map(str::to_string).collect();
        options.extend(g[2].split(',').map(str::to_string));
        best = Some(MountInfo {
            mount_point: mp,
            fs_type: g[0].to_string(),
            source: unescape(g[1]),
            options,
        });
    }
    best
}

/// The command line of the `glusterfs` client serving `mount_point`.
fn gluster_client_args(mount_point: &str) -> Option<Vec<String>> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_client = args.first().is_some_and(|a| a.ends_with("glusterfs"))
            && args.last().is_some_and(|a| a == mount_point);
        if is_client {
            return Some(args);
        }
    }
    None
}

/// GlusterFS client options that make two mounts coherent, as
/// (option, why).
const GLUSTER_NEEDS: [(&str, &str); 4] = [
    ("--attribute-timeout=0", "the kernel caches file attributes (size, mtime) for a second by default"),
    ("--entry-timeout=0", "the kernel caches name lookups, so a task file renamed into place elsewhere is not seen"),
    ("--negative-timeout=0", "the kernel caches \"no such file\""),
    ("--direct-io-mode=enable", "without it each mount keeps file data in its own page cache, and an index file rewritten in place through one mount is read stale through the other (seen: duplicate seq from concurrent creates)"),
];

fn judge(m: &MountInfo, client: Option<&[String]>) -> (Verdict, Vec<String>, Vec<String>) {
    let t = m.fs_type.as_str();
    let has = |o: &str| m.options.iter().any(|x| x == o);
    let value = |k: &str| {
        m.options
            .iter()
            .find_map(|x| x.strip_prefix(&format!("{k}=")).map(str::to_string))
    };
    match t {
        "fuse.glusterfs" => {
            let Some(args) = client else {
                return (
                    Verdict::Unknown,
                    m.options.clone(),
                    vec!["the glusterfs client process of this mount was not found (another PID namespace?); check its options by hand: mount -t glusterfs -o attribute-timeout=0,entry-timeout=0,negative-timeout=0,direct-io-mode=enable".into()],
                );
            };
            let mut advice: Vec<String> = GLUSTER_NEEDS
                .iter()
                .filter(|(o, _)| !args.iter().any(|a| a == o))
                .map(|(o, why)| format!("mount with {} ({why})", o.trim_start_matches("--")))
                .collect();
            let verdict = if advice.is_empty() {
                Verdict::Coherent
            } else {
                advice.push("and on the volume: gluster volume set VOL performance.{quick-read,io-cache,read-ahead,stat-prefetch,write-behind,open-behind,readdir-ahead,nl-cache,parallel-readdir,flush-behind} off and features.ctime off (mtimes from the brick's clock, spec 6.6)".into());
                Verdict::NotCoherent
            };
            (verdict, args.to_vec(), advice)
        }
        "nfs" | "nfs4" => {
            let mut advice = Vec::new();
            if value("vers").is_some_and(|v| v.starts_with('2') || v.starts_with('3')) {
                advice.push("NFSv2/v3 locks go through lockd and flock is local by default (local_lock): use NFSv4 (vers=4.1 or 4.2)".into());
            }
            if value("local_lock").is_some_and(|v| v != "none") {
                advice.push("local_lock is set: flock does not reach the server; mount with local_lock=none".into());
            }
            let lookup_ok = value("lookupcache").is_some_and(|v| v == "none" || v == "positive");
            let attr_ok = has("noac") || value("actimeo").is_some_and(|v| v == "0");
            if !lookup_ok {
                advice.push("mount with lookupcache=positive (or none): a cached \"no such file\" hides a task file created by another host".into());
            }
            if !attr_ok {
                advice.push("mount with actimeo=0 (or noac): attributes cached for seconds let a host read an index file rewritten elsewhere as it was (NFS close-to-open only revalidates on open)".into());
            }
            let v = if advice.is_empty() { Verdict::Coherent } else { Verdict::NotCoherent };
            (v, m.options.clone(), advice)
        }
        // The kernel client and ceph-fuse keep caches coherent through the
        // MDS's capabilities, and flock is cluster-wide.
        "ceph" | "fuse.ceph-fuse" => (Verdict::Coherent, m.options.clone(), Vec::new()),
        "fuse.sshfs" => (
            Verdict::NotCoherent,
            m.options.clone(),
            vec!["sshfs caches attributes and file data per client and its locks do not cross clients: do not share a .coordination/ over sshfs".into()],
        ),
        "cifs" | "smb3" => (
            Verdict::NotCoherent,
            m.options.clone(),
            vec!["SMB/CIFS: flock is not carried to the server, so two clients both hold the lock; do not share a .coordination/ over SMB".into()],
        ),
        _ => (Verdict::Unknown, m.options.clone(), vec![format!(
            "{t}: not a file system this version has been tested on; the known-good ones are GlusterFS (options above), NFSv4 (lookupcache=positive,actimeo=0,local_lock=none) and CephFS"
        )]),
    }
}

/// The doctor findings for a probe: `mount_not_coherent` (an error) or
/// `mount_unknown` (a warning); none for a local or coherent mount.
pub fn findings(r: &MountReport) -> Vec<crate::observe::doctor::Finding> {
    use crate::observe::doctor::{Finding, Severity};
    let (kind, severity) = match r.verdict {
        Verdict::Local | Verdict::Coherent => return Vec::new(),
        Verdict::NotCoherent => ("mount_not_coherent", Severity::Error),
        Verdict::Unknown => ("mount_unknown", Severity::Warning),
    };
    vec![Finding {
        kind: kind.into(),
        severity,
        file: ".".into(),
        message: format!(
            "{} at {} ({}) is {}",
            r.fs_type.as_deref().unwrap_or("the file system"),
            r.mount_point.as_deref().unwrap_or("?"),
            r.source.as_deref().unwrap_or("?"),
            if r.verdict == Verdict::NotCoherent {
                "not coherent across clients: processes on two hosts can both be granted a claim"
            } else {
                "a shared file system this version has not been tested on"
            }
        ),
        fix: r.advice.join("; "),
        fixable: false,
        fixed: false,
    }]
}

/// Probes the file system of `dir` (`doctor --shared`).
pub fn probe(dir: &Path) -> MountReport {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let shared = crate::protocol::watch::shared_fs_kind(&dir);
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| mount_of(&dir, &t));
    let Some(m) = info else {
        return MountReport {
            dir,
            mount_point: None,
            fs_type: shared.map(str::to_string),
            source: None,
            options: Vec::new(),
            verdict: if shared.is_some() {
                Verdict::Unknown
            } else {
                Verdict::Local
            },
            advice: if shared.is_some() {
                vec!["/proc/self/mountinfo has no entry for this directory; check the mount's options by hand".into()]
            } else {
                Vec::new()
            },
        };
    };
    let (verdict, options, advice) = if shared.is_none() {
        (Verdict::Local, m.options.clone(), Vec::new())
    } else {
        let client = (m.fs_type == "fuse.glusterfs")
            .then(|| gluster_client_args(&m.mount_point))
            .flatten();
        judge(&m, client.as_deref())
    };
    MountReport {
        dir,
        mount_point: Some(m.mount_point),
        fs_type: Some(m.fs_type),
        source: Some(m.source),
        options,
        verdict,
        advice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
        90 22 0:50 / /mnt/g\\040a rw,relatime shared:40 - fuse.glusterfs vm:/oc rw,user_id=0,group_id=0\n\
        91 22 0:51 / /srv/nfs rw,relatime shared:41 - nfs4 srv:/export rw,vers=4.2,lookupcache=positive,actimeo=0,local_lock=none\n\
        92 22 0:52 / /srv/nfs3 rw - nfs srv:/e rw,vers=3,local_lock=all\n";

    #[test]
    fn the_longest_mount_point_wins_and_escapes_are_undone() {
        let m = mount_of(Path::new("/mnt/g a/p/.coordination"), INFO).unwrap();
        assert_eq!(
            (m.mount_point.as_str(), m.fs_type.as_str()),
            ("/mnt/g a", "fuse.glusterfs")
        );
        assert_eq!(
            mount_of(Path::new("/home/x"), INFO).unwrap().fs_type,
            "ext4"
        );
    }

    #[test]
    fn gluster_needs_every_option_and_nfs_its_caches_off() {
        let m = mount_of(Path::new("/mnt/g a/p"), INFO).unwrap();
        let all: Vec<String> = GLUSTER_NEEDS.iter().map(|(o, _)| o.to_string()).collect();
        assert_eq!(judge(&m, Some(&all)).0, Verdict::Coherent);
        let (v, _, advice) = judge(&m, Some(&all[..3]));
        assert_eq!(v, Verdict::NotCoherent);
        assert!(advice[0].contains("direct-io-mode=enable"), "{advice:?}");
        let nfs = mount_of(Path::new("/srv/nfs/x"), INFO).unwrap();
        assert_eq!(judge(&nfs, None).0, Verdict::Coherent);
        let nfs3 = mount_of(Path::new("/srv/nfs3/x"), INFO).unwrap();
        let (v, _, advice) = judge(&nfs3, None);
        assert_eq!(v, Verdict::NotCoherent);
        assert_eq!(advice.len(), 4, "{advice:?}");
    }

    #[test]
    fn a_local_directory_is_local() {
        let d = tempfile::tempdir().unwrap();
        let r = probe(d.path());
        assert_eq!(r.verdict, Verdict::Local);
        assert!(r.advice.is_empty());
    }
}
