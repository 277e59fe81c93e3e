//! The commit log, `.coordination/commit.log` (`spec/PROTOCOL.md` section
//! 4.8): in durable mode on a local file system, a mutation's commit point
//! is one `fdatasync`'d write of a record holding the full new content of
//! every task file it writes. The task files stay the readable state; they
//! are written (temp + rename, 4.2) after the record without an fsync of
//! their own, and made durable in batches by a checkpoint (`syncfs(2)`, then
//! a new generation of the log begins). After a crash the next lock holder
//! finishes what the log says was committed; after a reboot it writes every
//! committed record again.
//!
//! This is the write-ahead rule of ARIES (Mohan et al., 1992): no task file
//! is replaced before the record of its new content is durable, so a power
//! loss can tear only files whose content is in the log.
//!
//! Record format, one per line: `<crc32c> <len> <json>\n`, where `<crc32c>`
//! is the CRC-32C (Castagnoli, RFC 3720 appendix B.4) of the generation's
//! salt followed by the `<json>` bytes, in 8 lowercase hex digits, and
//! `<len>` the length of `<json>` in decimal bytes. A generation starts at
//! offset 0 with a `checkpoint` record (checked with an empty salt) that
//! holds a new random salt; it overwrites the previous generation in place,
//! as SQLite's WAL reuses its file (<https://sqlite.org/walformat.html>),
//! so that the `fdatasync` of a commit is a data-only write rather than a
//! change of the file's size. A line that does not check (torn by a crash
//! in the middle of a write, or left by an earlier generation, whose salt
//! differs) ends the valid log.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Size of a generation, in bytes, past which the holder that wrote to it
/// checkpoints the log (`spec` 4.8): `syncfs(2)`, then a new generation
/// overwrites this one from offset 0. 256 KiB is a few hundred task writes,
/// so the `syncfs` costs well under one fsync per commit, and a writer
/// that reads the generation to find its end reads at most this much.
pub const CHECKPOINT_BYTES: u64 = 1 << 18;

/// A checkpoint that finds the file larger than this (a generation that
/// ended with one very large record) truncates it to 0 first, so that the
/// file does not stay large. In bytes.
const SHRINK_BYTES: u64 = 4 * CHECKPOINT_BYTES;

/// One record of the log (`spec` 4.8), tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// The first record of a generation, at offset 0: the boot the records
    /// that follow were written in (`/proc/sys/kernel/random/boot_id`) and
    /// the salt their checksums begin with.
    Checkpoint {
        /// The boot id, trimmed; empty where there is none.
        boot_id: String,
        /// 16 lowercase hex digits, random per generation; empty in a log
        /// written before generations were reused (its records are then
        /// checked with an empty salt).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        salt: String,
    },
    /// A mutation started changing the index before its commit: a log that
    /// ends here was left by a crash, and the index is rebuilt.
    Begin,
    /// A committed mutation: the full new content of each task file.
    Commit {
        /// Task files written, in order; a later entry for the same id wins.
        tasks: Vec<TaskWrite>,
    },
    /// Every commit before this record is in the task files.
    Applied,
}

/// One task file of a [`Record::Commit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskWrite {
    /// The task id: the file is `tasks/<id>.json`.
    pub id: String,
    /// The file's complete content (UTF-8 JSON text, as written).
    pub content: String,
}

/// Encodes `r` as one log line, `<crc32c> <len> <json>\n`, its checksum
/// taken over `salt` (the generation's, from its checkpoint; empty for the
/// checkpoint record itself) and then the JSON.
///
/// # Errors
/// [`Error::Other`] when `r` cannot be serialised (never for these types).
pub fn encode(r: &Record, salt: &str) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(r).map_err(|e| Error::Other(e.to_string()))?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(salt.as_bytes()), &json);
    let mut line = format!("{crc:08x} {} ", json.len()).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

/// Decodes the valid prefix of a log: its records, each with the offset
/// just past its line, and the length of that prefix in bytes. The first
/// line is checked with an empty salt; when it is a checkpoint, the lines
/// after it are checked with its salt. Decoding stops at the first line
/// that is incomplete or whose length or checksum does not match (a torn
/// write, or a record of an earlier generation).
///
/// # Errors
/// [`Error::Corrupt`] for a line whose checksum matches but whose JSON is
/// not a record this version knows (written by a newer implementation:
/// dropping it would lose a commit).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<(Vec<(Record, u64)>, u64)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut salt = String::new();
    while at < bytes.len() {
        let Line::Whole(json, n) = check_line(&bytes[at..], &salt) else {
            break;
        };
        let r: Record = parse(path, json)?;
        let first_not_checkpoint = at == 0 && !matches!(r, Record::Checkpoint { .. });
        if let (0, Record::Checkpoint { salt: s, .. }) = (at, &r) {
            salt.clone_from(s);
        }
        at += n;
        out.push((r, at as u64));
        if first_not_checkpoint {
            // Not a generation: nothing after it can be checked.
            break;
        }
    }
    Ok((out, at as u64))
}

fn parse(path: &Path, json: &[u8]) -> Result<Record> {
    serde_json::from_slice(json).map_err(|e| {
        Error::corrupt(
            path,
            format!(
                "holds a record this version does not know ({e}); a newer orchestrate wrote it"
            ),
        )
    })
}

/// What is at the start of a byte range of the log.
enum Line<'a> {
    /// A line that checks: its JSON and the length of the whole line.
    Whole(&'a [u8], usize),
    /// The start of a line that may check once this many bytes in all are
    /// read (`usize::MAX`: its length field is not complete yet).
    Short(usize),
    /// Not a line of this generation.
    Bad,
}

fn check_line<'a>(b: &'a [u8], salt: &str) -> Line<'a> {
    fn digits(b: &[u8], radix: u32) -> Option<u64> {
        u64::from_str_radix(std::str::from_utf8(b).ok()?, radix).ok()
    }
    if b.len() < 9 {
        return Line::Short(usize::MAX);
    }
    let (Some(crc), b' ') = (digits(&b[..8], 16), b[8]) else {
        return Line::Bad;
    };
    let rest = &b[9..];
    let Some(sp2) = rest.iter().take(21).position(|&c| c == b' ') else {
        return if rest.len() < 21 {
            Line::Short(usize::MAX)
        } else {
            Line::Bad
        };
    };
    let Some(len) = digits(&rest[..sp2], 10).and_then(|l| usize::try_from(l).ok()) else {
        return Line::Bad;
    };
    let start = 9 + sp2 + 1;
    let Some(whole) = start.checked_add(len).and_then(|e| e.checked_add(1)) else {
        return Line::Bad;
    };
    if b.len() < whole {
        return Line::Short(whole);
    }
    let json = &b[start..whole - 1];
    let ok = b[whole - 1] == b'\n'
        && u64::from(crc32c::crc32c_append(crc32c::crc32c(salt.as_bytes()), json)) == crc;
    if ok {
        Line::Whole(json, whole)
    } else {
        Line::Bad
    }
}

/// The kind of the last valid record, which is all that [`Log::is_clean`]
/// needs of the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Checkpoint,
    Applied,
    Other,
}

/// The open log file of one lock holder: where its current generation ends
/// (the next record is written there) and that generation's salt and boot.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    file: File,
    /// Bytes of the file (the current generation, then what is left of
    /// earlier ones).
    size: u64,
    /// Offset just past the last valid record; 0 when there is none.
    end: u64,
    salt: String,
    boot_id: Option<String>,
    last: Option<Last>,
}

/// How much of the log a scan reads at a time, in bytes.
const READ_BYTES: usize = 64 * 1024;

/// The JSON of an `applied` record.
const APPLIED: &[u8] = br#"{"kind":"applied"}"#;

impl Log {
    /// Opens the log at `path` read-write, creating it (mode per `spec`
    /// 4.7) when `create`, and finds the end of its current generation;
    /// `Ok(None)` when it is missing and not `create`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a symlink or non-regular file at `path`;
    /// [`Error::Io`] otherwise.
    pub fn open(path: &Path, create: bool) -> Result<Option<Log>> {
        let flags = libc::O_RDWR | if create { libc::O_CREAT } else { 0 };
        let file = match crate::protocol::store::open_regular(path, flags, 0o600, "open") {
            Ok(f) => f,
            Err(Error::Io { source, .. })
                if !create && source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let log = Log::from_file(path, file)?;
        if log.size == 0 && create {
            crate::protocol::store::set_file_mode(&log.file, path)?;
        }
        Ok(Some(log))
    }

    fn from_file(path: &Path, file: File) -> Result<Log> {
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let mut log = Log {
            path: path.to_path_buf(),
            file,
            size,
            end: 0,
            salt: String::new(),
            boot_id: None,
            last: None,
        };
        log.scan()?;
        Ok(log)
    }

    /// Reads the current generation from offset 0 up to its first line that
    /// does not check, in [`READ_BYTES`] steps, checking each line's
    /// checksum but parsing only the first and the last.
    fn scan(&mut self) -> Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        let mut at = 0usize;
        loop {
            match check_line(&buf[at..], &self.salt) {
                Line::Whole(json, n) => {
                    if at == 0 {
                        match serde_json::from_slice::<Record>(json) {
                            Ok(Record::Checkpoint { boot_id, salt }) => {
                                self.boot_id = Some(boot_id);
                                self.salt = salt;
                                self.last = Some(Last::Checkpoint);
                            }
                            // Not a generation this version can read on:
                            // recovery decodes it and says why.
                            _ => {
                                self.end = n as u64;
                                self.last = Some(Last::Other);
                                return Ok(());
                            }
                        }
                    } else if json == APPLIED {
                        self.last = Some(Last::Applied);
                    } else {
                        self.last = Some(Last::Other);
                    }
                    at += n;
                }
                Line::Short(need) if (buf.len() as u64) < self.size => {
                    let want = if need == usize::MAX {
                        READ_BYTES
                    } else if need as u64 > self.size - at as u64 {
                        // A length past the end of the file: not a line.
                        break;
                    } else {
                        (at + need - buf.len()).max(READ_BYTES)
                    };
                    let off = buf.len();
                    let n = (want as u64).min(self.size - off as u64) as usize;
                    buf.resize(off + n, 0);
                    self.file
                        .read_exact_at(&mut buf[off..], off as u64)
                        .map_err(|e| Error::io("read", &self.path, e))?;
                }
                Line::Short(_) | Line::Bad => break,
            }
        }
        self.end = at as u64;
        Ok(())
    }

    /// Opens the log at `path` read-only, for a reader that takes no lock
    /// (`doctor`); `Ok(None)` when it is missing.
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open_read(path: &Path) -> Result<Option<Log>> {
        let file = match crate::protocol::store::open_regular(path, libc::O_RDONLY, 0, "open") {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        Log::from_file(path, file).map(Some)
    }

    /// The length, in bytes, of the current generation's valid records:
    /// where the next record is written.
    pub fn len(&self) -> u64 {
        self.end
    }

    /// True when the log has no valid record (an empty file, or one whose
    /// first line does not check).
    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// True when nothing in the log needs recovery in this boot: no valid
    /// record, or a generation whose checkpoint is of `boot_id` (not empty:
    /// an unknown boot may be another one) and whose last valid record is
    /// `applied` or that checkpoint.
    pub fn is_clean(&self, boot_id: &str) -> bool {
        self.end == 0
            || (!boot_id.is_empty()
                && self.boot_id.as_deref() == Some(boot_id)
                && matches!(self.last, Some(Last::Applied | Last::Checkpoint)))
    }

    /// The current generation's salt, which [`encode`] takes (empty when
    /// there is no generation).
    pub fn salt(&self) -> &str {
        &self.salt
    }

    /// Reads the current generation's valid records (at most a
    /// checkpoint's worth plus one mutation).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.end as usize];
        self.file
            .read_exact_at(&mut buf, 0)
            .map_err(|e| Error::io("read", &self.path, e))?;
        Ok(buf)
    }

    /// Writes `bytes` (lines encoded with [`Log::salt`]) at the end of the
    /// current generation, without syncing.
    ///
    /// # Errors
    /// [`Error::Io`]; the end is then unchanged as far as this holder
    /// knows (a partial line left behind does not check).
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, self.end)
            .map_err(|e| Error::io("write to", &self.path, e))?;
        self.end += bytes.len() as u64;
        self.size = self.size.max(self.end);
        self.last = Some(Last::Other);
        Ok(())
    }

    /// Cuts off whatever the file holds past the current generation's
    /// valid records (a torn write, or the rest of earlier generations),
    /// durably.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn cut_tail(&mut self) -> Result<()> {
        if self.size > self.end {
            self.truncate(self.end)?;
        }
        Ok(())
    }

    /// True when the current generation holds a record past its checkpoint.
    pub fn has_records(&self) -> bool {
        matches!(self.last, Some(Last::Applied | Last::Other))
    }

    /// Starts a new generation at offset 0 (`spec` 4.8): a checkpoint
    /// record of `boot_id` with a new random salt, written over whatever
    /// the file holds, not synced. Every record of earlier generations
    /// then fails its checksum.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn begin_generation(&mut self, boot_id: &str) -> Result<()> {
        if self.size > SHRINK_BYTES {
            self.truncate(0)?;
        }
        let salt = format!("{:016x}", rand::random::<u64>());
        let line = encode(
            &Record::Checkpoint {
                boot_id: boot_id.to_string(),
                salt: salt.clone(),
            },
            "",
        )?;
        self.end = 0;
        self.append(&line)?;
        self.salt = salt;
        self.boot_id = Some(boot_id.to_string());
        self.last = Some(Last::Checkpoint);
        Ok(())
    }

    /// `fdatasync(2)` of the log: the commit point of what was written.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &self.path, e))
    }

    /// Cuts the file to `len` bytes (a torn tail, a commit whose sync
    /// failed, or 0 to empty it) and makes that durable.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io("truncate", &self.path, e))?;
        self.size = len;
        self.end = self.end.min(len);
        if len == 0 {
            self.salt.clear();
            self.boot_id = None;
            self.last = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(salt: &str) -> Record {
        Record::Checkpoint {
            boot_id: "b".into(),
            salt: salt.into(),
        }
    }

    fn commit(id: &str) -> Record {
        Record::Commit {
            tasks: vec![TaskWrite {
                id: id.into(),
                content: "{\n  \"id\": \"x\"\n}\n".into(),
            }],
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let p = Path::new("commit.log");
        let mut bytes = encode(&checkpoint("s1"), "").unwrap();
        bytes.extend(encode(&commit("a"), "s1").unwrap());
        bytes.extend(encode(&Record::Applied, "s1").unwrap());
        let whole = bytes.len() as u64;
        let (recs, valid) = decode(p, &bytes).unwrap();
        assert_eq!(valid, whole);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].0, commit("a"));
        let second = encode(&commit("b"), "s1").unwrap();
        for cut in 0..second.len() {
            let mut torn = bytes.clone();
            torn.extend_from_slice(&second[..cut]);
            let (recs, valid) = decode(p, &torn).unwrap();
            assert_eq!((recs.len(), valid), (3, whole), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let p = Path::new("commit.log");
        let line = encode(&commit("a"), "").unwrap();
        for i in 0..line.len() - 1 {
            let mut bad = line.clone();
            bad[i] ^= 0x01;
            let (recs, valid) = decode(p, &bad).unwrap_or((Vec::new(), 0));
            assert_eq!((recs.len(), valid), (0, 0), "byte {i}");
        }
    }

    #[test]
    fn records_of_an_earlier_generation_end_the_log() {
        let p = Path::new("commit.log");
        // Generation 1: a checkpoint and many records.
        let mut old = encode(&checkpoint("1111"), "").unwrap();
        for i in 0..20 {
            old.extend(encode(&commit(&format!("old{i}")), "1111").unwrap());
            old.extend(encode(&Record::Applied, "1111").unwrap());
        }
        // Generation 2 overwrites the start in place.
        let mut new = encode(&checkpoint("2222"), "").unwrap();
        new.extend(encode(&commit("new"), "2222").unwrap());
        assert!(new.len() < old.len() / 2);
        let mut file = old.clone();
        file[..new.len()].copy_from_slice(&new);
        let (recs, valid) = decode(p, &file).unwrap();
        assert_eq!(valid, new.len() as u64);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].0, commit("new"));
        // The same record with another generation's salt does not check.
        let line = encode(&commit("new"), "1111").unwrap();
        assert!(matches!(check_line(&line, "2222"), Line::Bad));
        assert!(matches!(check_line(&line, "1111"), Line::Whole(..)));
        // A checkpoint written before salts existed: records checked with
        // an empty salt, as that version wrote them.
        let mut legacy = br#"{"kind":"checkpoint","boot_id":"b"}"#.to_vec();
        legacy = format!("{:08x} {} ", crc32c::crc32c(&legacy), legacy.len())
            .into_bytes()
            .into_iter()
            .chain(legacy)
            .chain([b'\n'])
            .collect();
        legacy.extend(encode(&commit("a"), "").unwrap());
        let (recs, _) = decode(p, &legacy).unwrap();
        assert_eq!(recs.len(), 2, "{recs:?}");
    }

    #[test]
    fn a_scan_finds_the_end_of_the_generation_and_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("commit.log");
        let mut log = Log::open(&p, true).unwrap().unwrap();
        assert!(log.is_empty() && log.is_clean("b"));
        // A first generation larger than one read, then a second over it.
        log.begin_generation("b").unwrap();
        for i in 0..200 {
            let rec = encode(&commit(&format!("t{i}")), log.salt()).unwrap();
            log.append(&rec).unwrap();
        }
        let big = std::fs::metadata(&p).unwrap().len();
        assert!(big > READ_BYTES as u64 / 4, "{big}");
        log.begin_generation("b").unwrap();
        let rec = encode(&commit("x"), log.salt()).unwrap();
        log.append(&rec).unwrap();
        let end = log.len();
        let seen = Log::open(&p, false).unwrap().unwrap();
        assert_eq!(seen.len(), end);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            big,
            "not overwritten in place"
        );
        assert!(
            !seen.is_clean("b"),
            "a commit without `applied` is not clean"
        );
        let applied = encode(&Record::Applied, log.salt()).unwrap();
        log.append(&applied).unwrap();
        let seen = Log::open(&p, false).unwrap().unwrap();
        assert!(seen.is_clean("b"));
        assert!(!seen.is_clean("another boot"));
        assert!(seen.has_records());
        let (recs, valid) = decode(&p, &seen.read_all().unwrap()).unwrap();
        assert_eq!((recs.len(), valid), (3, seen.len()));
        // Records larger than one read are found too.
        let mut log = seen;
        log.begin_generation("b").unwrap();
        let huge = Record::Commit {
            tasks: vec![TaskWrite {
                id: "h".into(),
                content: "x".repeat(3 * READ_BYTES),
            }],
        };
        let rec = encode(&huge, log.salt()).unwrap();
        log.append(&rec).unwrap();
        let seen = Log::open(&p, false).unwrap().unwrap();
        assert_eq!(seen.len(), log.len());
    }

    #[test]
    fn an_unknown_record_that_checks_is_refused() {
        let json = br#"{"kind":"from_the_future"}"#;
        let mut line = format!("{:08x} {} ", crc32c::crc32c(json), json.len()).into_bytes();
        line.extend_from_slice(json);
        line.push(b'\n');
        assert!(matches!(
            decode(Path::new("commit.log"), &line),
            Err(Error::Corrupt { .. })
        ));
    }
}

/// A task file written by the mutation in progress, not yet committed.
#[derive(Debug)]
pub(super) struct Staged {
    task: crate::protocol::task::Task,
    bytes: Vec<u8>,
}

impl super::Txn<'_> {
    /// The task file `id` as this mutation sees it: its staged write if it
    /// made one, else the file. `Ok(None)` when there is no such file.
    ///
    /// # Errors
    /// Data and I/O errors reading the file.
    pub(super) fn read(
        &self,
        id: &crate::protocol::task::TaskId,
    ) -> Result<Option<crate::protocol::task::Task>> {
        if let Some(&i) = self.staged_at.get(id) {
            return Ok(Some(self.staged[i].task.clone()));
        }
        crate::protocol::store::read_task(&self.c.layout.task(id), id)
    }

    /// Stages the write of `t`'s file (`bytes`) for the commit at the end of
    /// the mutation (or at the next [`super::Txn::flush`]). The first stage
    /// of a mutation appends `begin` (and a checkpoint record to an empty
    /// log), unsynced, so that a crash before the commit is seen and the
    /// index, whose entries may already be gone, is rebuilt (`spec` 4.8).
    ///
    /// # Errors
    /// I/O errors appending to the log.
    pub(super) fn stage(&mut self, t: &crate::protocol::task::Task, bytes: Vec<u8>) -> Result<()> {
        if !self.began {
            let log = self.open_log()?;
            if log.is_empty() {
                log.begin_generation(crate::protocol::index::boot_id())?;
            }
            let begin = encode(&Record::Begin, log.salt())?;
            log.append(&begin)?;
            self.began = true;
        }
        let s = Staged {
            task: t.clone(),
            bytes,
        };
        match self.staged_at.get(&t.id) {
            Some(&i) => self.staged[i] = s,
            None => {
                self.staged_at.insert(t.id.clone(), self.staged.len());
                self.staged.push(s);
            }
        }
        Ok(())
    }

    fn open_log(&mut self) -> Result<&mut Log> {
        if self.log.is_none() {
            self.log = Log::open(&self.c.layout.commit_log(), true)?;
        }
        self.log
            .as_mut()
            .ok_or_else(|| Error::Other("the commit log could not be opened".into()))
    }

    /// Commits the staged writes (`spec` 4.8): appends one `commit` record
    /// and `fdatasync`s the log (the commit point), then writes each task
    /// file (4.2 steps 1, 2, 3 and 5), appends `applied`, and checkpoints
    /// when the log has grown past [`CHECKPOINT_BYTES`]. Nothing staged:
    /// nothing done.
    ///
    /// # Errors
    /// I/O errors. Before the commit point the mutation is then not
    /// committed (its record is cut off again). After it, a failure of the
    /// first task-file write takes the record back too (nothing was applied
    /// and nobody saw it); a later failure leaves the mutation committed,
    /// and the next lock holder finishes writing the task files.
    pub(super) fn flush(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.staged);
        self.staged_at.clear();
        let commit = Record::Commit {
            tasks: staged
                .iter()
                .map(|s| TaskWrite {
                    id: s.task.id.to_string(),
                    content: String::from_utf8_lossy(&s.bytes).into_owned(),
                })
                .collect(),
        };
        let log = self.open_log()?;
        let rec = encode(&commit, log.salt())?;
        crate::protocol::faults::point("before_log_append");
        if crate::protocol::faults::armed("mid_log_record") {
            let _ = log.append(&rec[..rec.len() / 2]);
            std::process::abort();
        }
        let before = log.len();
        if let Err(e) = log.append(&rec).and_then(|()| log.sync()) {
            // Not committed: cut the record off so that nobody applies it.
            let _ = log.truncate(before);
            return Err(e);
        }
        crate::protocol::faults::point("after_log_append");
        for (i, s) in staged.iter().enumerate() {
            let written = crate::protocol::store::write_atomic(
                &self.c.layout.task(&s.task.id),
                &s.bytes,
                false,
                false,
            );
            if let Err(e) = written {
                if i == 0 {
                    // Nothing applied and nobody else has seen the commit
                    // (the lock is ours): take it back, so that a write
                    // refused by the file system (no room, no permission)
                    // changes nothing, as without the log.
                    let log = self.open_log()?;
                    if log.truncate(before).is_ok() {
                        return Err(e);
                    }
                }
                // Committed, partly applied: the next lock holder finishes.
                tracing::warn!(
                    error = %e,
                    "the change is committed in commit.log; the next mutation writes its task files"
                );
                return Err(e);
            }
        }
        crate::protocol::faults::point("before_applied");
        let log = self.open_log()?;
        let applied = encode(&Record::Applied, log.salt())?;
        log.append(&applied)?;
        let full = log.len() > CHECKPOINT_BYTES;
        // A later stage of this mutation (after a flush before a listing)
        // changes the index again: it must append a `begin` of its own.
        self.began = false;
        if full {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes every committed task file durable and starts a new generation
    /// of the log (`spec` 4.8): `syncfs(2)` of the file system of `tasks/`,
    /// then a `checkpoint` record with a new salt at offset 0, fdatasynced
    /// (the file keeps its size, so that later commits overwrite it in
    /// place). Flushes staged writes first. A no-op when there is no log or
    /// it holds no record past its checkpoint. Archive calls it before it
    /// moves task files, since a replay would bring a moved file back.
    ///
    /// # Errors
    /// I/O errors.
    pub(super) fn checkpoint(&mut self) -> Result<()> {
        self.flush()?;
        if self.log.is_none() {
            self.log = Log::open(&self.c.layout.commit_log(), false)?;
        }
        let tasks = self.c.layout.tasks_dir();
        let Some(log) = self.log.as_mut().filter(|l| l.has_records()) else {
            return Ok(());
        };
        crate::protocol::store::sync_fs(&tasks)?;
        crate::protocol::faults::point("before_checkpoint");
        // A new generation over this one, durable before anything (an
        // archive's moves) relies on the old one not being replayed.
        log.begin_generation(crate::protocol::index::boot_id())?;
        log.sync()?;
        self.began = false;
        Ok(())
    }

    /// Recovery of the commit log, first thing under the lock (`spec` 4.8,
    /// 4.5 step 1). Clean log (empty, or ending in `applied` in this boot):
    /// nothing but the read of the current generation (at most
    /// [`CHECKPOINT_BYTES`] and one mutation) for a holder that uses the
    /// log. Otherwise:
    /// - in this boot (a holder crashed): the file is cut at the end of the
    ///   valid log (a torn write may be there), the log
    ///   `fdatasync`ed (its writer may have died before its sync), the
    ///   commits after the last `applied` written to the task files, and
    ///   `applied` appended;
    /// - in another boot (the machine restarted, so unsynced task files may
    ///   be lost or torn): every committed task file is written again, each
    ///   fsynced, then `tasks/` fsynced;
    /// - either way, a holder that does not use the log (relaxed mode, a
    ///   network file system, `ORCHESTRATE_COMMIT_LOG=0`) then makes the
    ///   files durable (`syncfs`) and empties the log, since it will write
    ///   task files the log does not know about.
    ///
    /// A clean log is only emptied (after a `syncfs`) by a holder that does
    /// not use it. Unless the log was clean, the index is marked stale (step
    /// 3 rebuilds it) and a `commit_log_recovered` event says what was done.
    ///
    /// # Errors
    /// Data errors (a record from a newer version) and I/O errors.
    pub(super) fn recover_commit_log(&mut self) -> Result<()> {
        let path = self.c.layout.commit_log();
        let boot = crate::protocol::index::boot_id();
        let Some(mut log) = Log::open(&path, self.c.commit_log)? else {
            return Ok(());
        };
        if log.is_clean(boot) {
            if !self.c.commit_log && !log.is_empty() {
                // Every commit is in the task files already; make them
                // durable before writing files the log does not know about.
                // Nothing to recover: the index stays as it is.
                crate::protocol::store::sync_fs(&self.c.layout.tasks_dir())?;
                log.truncate(0)?;
            }
            self.log = Some(log);
            return Ok(());
        }
        let bytes = log.read_all()?;
        let (records, valid) = decode(&path, &bytes)?;
        // An unknown boot (empty id) may be another one: only a known,
        // equal id proves that the kernel kept the unsynced writes.
        let same_boot = !boot.is_empty()
            && matches!(records.first(), Some((Record::Checkpoint { boot_id, .. }, _)) if boot_id == boot);
        let commits = |from: usize| -> Vec<&TaskWrite> {
            records[from..]
                .iter()
                .filter_map(|(r, _)| match r {
                    Record::Commit { tasks } => Some(tasks),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        let last_applied = records
            .iter()
            .rposition(|(r, _)| matches!(r, Record::Applied))
            .map_or(0, |i| i + 1);
        // The index is changed before the commit, after `begin`: only a
        // `begin` with no `commit` after it can have left index entries of
        // a mutation that did not happen. A crash after the commit left the
        // index as the commit says, so the replay needs no rebuild (which
        // reads every task file).
        let index_touched = records[last_applied..]
            .iter()
            .rev()
            .find_map(|(r, _)| match r {
                Record::Begin => Some(true),
                Record::Commit { .. } => Some(false),
                _ => None,
            })
            .unwrap_or(false);
        let (reason, written) = if same_boot {
            debug_assert_eq!(valid, log.len());
            log.cut_tail()?;
            let pending = commits(last_applied);
            if !pending.is_empty() {
                log.sync()?;
            }
            let n = self.rewrite(&pending, false)?;
            let applied = encode(&Record::Applied, log.salt())?;
            log.append(&applied)?;
            ("crash", n)
        } else {
            let n = self.rewrite(&commits(0), true)?;
            crate::protocol::store::sync_dir(&self.c.layout.tasks_dir())?;
            log.truncate(0)?;
            ("reboot", n)
        };
        if !self.c.commit_log && !log.is_empty() {
            crate::protocol::store::sync_fs(&self.c.layout.tasks_dir())?;
            log.truncate(0)?;
        }
        if index_touched || !same_boot {
            self.c.index.mark_stale();
        }
        let mut e = crate::protocol::events::Event::new("commit_log_recovered", self.now);
        e.detail.insert("reason".into(), reason.into());
        e.detail.insert("task_files".into(), written.into());
        e.detail
            .insert("uses_the_log".into(), self.c.commit_log.into());
        self.events.push(e);
        tracing::info!(reason, task_files = written, "recovered the commit log");
        self.log = Some(log);
        Ok(())
    }

    /// Writes the last content of each task file in `writes`, fsynced
    /// when `durable`; the number of files written.
    fn rewrite(&self, writes: &[&TaskWrite], durable: bool) -> Result<usize> {
        let mut last: Vec<&TaskWrite> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for w in writes.iter().rev() {
            if seen.insert(w.id.as_str()) {
                last.push(w);
            }
        }
        last.reverse();
        for (i, w) in last.iter().enumerate() {
            if i > 0 {
                crate::protocol::faults::point("mid_replay");
            }
            let id = crate::protocol::task::TaskId::new(&w.id)?;
            crate::protocol::store::write_atomic(
                &self.c.layout.task(&id),
                w.content.as_bytes(),
                durable,
                false,
            )?;
        }
        Ok(last.len())
    }
}
