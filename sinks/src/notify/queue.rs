//! The alert notifiers' durable retry queue: notifications are appended to a JSON-lines file and
//! fsynced before the sink accepts them, delivered strictly in order, and marked delivered in
//! a small cursor file (replaced atomically). A restart resumes after the cursor, so a receiver
//! that is down for minutes, or a pipeline restart, loses nothing. The file is rewritten
//! without delivered entries once they make up most of it. The queue is bounded: when full,
//! the oldest undelivered entry is dropped and counted.
//!
//! The ids of the newest `RECENT_IDS` notifications accepted are kept in a second file, so a
//! notification produced again — by the replay after a crash restored an earlier checkpoint
//! — is recognised and not queued twice: each state change reaches the receiver once.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One queued delivery: the exact body to send and what identifies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the queue, increasing by one.
    pub sequence: u64,
    /// The receiver's idempotency key.
    pub notification_id: String,
    pub alert_id: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("notification queue {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Entries waiting for delivery, mirrored on disk.
pub struct DurableQueue {
    dir: PathBuf,
    log: File,
    pending: VecDeque<Entry>,
    next_sequence: u64,
    /// Entries in the log file (delivered or not).
    logged: u64,
    capacity: usize,
    /// Ids of recently accepted notifications, oldest first, mirrored in `RECENT`.
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
    recent_file: File,
    recent_logged: usize,
}

const LOG: &str = "queue.jsonl";
const CURSOR: &str = "delivered";
const RECENT: &str = "recent_ids";
/// How many accepted notification ids are remembered to recognise a replayed one.
const RECENT_IDS: usize = 10_000;

/// What `push` did.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Undelivered entries dropped to stay within the capacity (oldest first).
    pub dropped: Vec<Entry>,
    /// Notifications not queued because one with the same id already was.
    pub duplicates: usize,
}

impl DurableQueue {
    /// Opens (or creates) the queue in `dir`, holding at most `capacity` undelivered entries.
    /// Entries written before a crash and not yet delivered are pending again; a torn last
    /// line (a crash mid-append) is skipped.
    pub fn open(dir: &Path, capacity: usize) -> Result<Self, QueueError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let log_path = dir.join(LOG);
        let cursor_path = dir.join(CURSOR);
        let delivered: u64 = match fs::read_to_string(&cursor_path) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_error(&cursor_path)(e)),
        };
        let mut pending = VecDeque::new();
        let mut logged = 0;
        let mut last_sequence = delivered;
        let mut damaged = false;
        if log_path.exists() {
            let file = File::open(&log_path).map_err(io_error(&log_path))?;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(io_error(&log_path))?;
                let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
                    tracing::warn!(path = %log_path.display(), "skipping a torn or unreadable queue line");
                    damaged = true;
                    continue;
                };
                logged += 1;
                last_sequence = last_sequence.max(entry.sequence);
                if entry.sequence > delivered {
                    pending.push_back(entry);
                }
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error(&log_path))?;
        let recent_path = dir.join(RECENT);
        let mut recent = VecDeque::new();
        match fs::read_to_string(&recent_path) {
            // A torn last line is an id that was never accepted (its push did not return).
            Ok(text) if text.ends_with('\n') || text.is_empty() => {
                recent.extend(text.lines().map(String::from))
            }
            Ok(text) => {
                let complete = text.rfind('\n').map_or("", |end| &text[..end]);
                recent.extend(complete.lines().map(String::from));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&recent_path)(e)),
        }
        while recent.len() > RECENT_IDS {
            recent.pop_front();
        }
        let mut recent_set: HashSet<String> = recent.iter().cloned().collect();
        // An entry logged by a push that died before remembering its id is known too.
        for entry in &pending {
            if recent_set.insert(entry.notification_id.clone()) {
                recent.push_back(entry.notification_id.clone());
            }
        }
        let recent_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&recent_path)
            .map_err(io_error(&recent_path))?;
        let mut queue = Self {
            dir: dir.to_path_buf(),
            log,
            pending,
            next_sequence: last_sequence + 1,
            logged,
            capacity: capacity.max(1),
            recent_logged: recent.len(),
            recent,
            recent_set,
            recent_file,
        };
        // Rewrite the id file so that it ends on a whole line.
        queue.compact_recent()?;
        while queue.pending.len() > queue.capacity {
            queue.pending.pop_front();
        }
        if damaged {
            // Rewrite the log so the next append does not continue a torn line.
            queue.compact()?;
        }
        Ok(queue)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn front(&self) -> Option<&Entry> {
        self.pending.front()
    }

    /// Appends entries and syncs them to disk, skipping notifications already accepted.
    pub fn push(&mut self, items: Vec<(String, String, String)>) -> Result<Pushed, QueueError> {
        let before = items.len();
        let mut seen_now = HashSet::new();
        let items: Vec<_> = items
            .into_iter()
            .filter(|(id, _, _)| !self.recent_set.contains(id) && seen_now.insert(id.clone()))
            .collect();
        let duplicates = before - items.len();
        if items.is_empty() {
            return Ok(Pushed {
                dropped: Vec::new(),
                duplicates,
            });
        }
        let mut ids = String::new();
        for (id, _, _) in &items {
            ids.push_str(id);
            ids.push('\n');
        }
        let mut text = String::new();
        for (notification_id, alert_id, body) in items {
            let entry = Entry {
                sequence: self.next_sequence,
                notification_id,
                alert_id,
                body,
            };
            self.next_sequence += 1;
            // An entry of strings always serialises.
            text.push_str(&serde_json::to_string(&entry).unwrap_or_default());
            text.push('\n');
            self.pending.push_back(entry);
            self.logged += 1;
        }
        let path = self.dir.join(LOG);
        self.log
            .write_all(text.as_bytes())
            .map_err(io_error(&path))?;
        self.log.sync_data().map_err(io_error(&path))?;
        self.remember(&ids)?;
        let mut dropped = Vec::new();
        while self.pending.len() > self.capacity {
            if let Some(entry) = self.pending.pop_front() {
                dropped.push(entry);
            }
        }
        if let (Some(last), false) = (dropped.last(), dropped.is_empty()) {
            self.write_cursor(last.sequence)?;
        }
        Ok(Pushed {
            dropped,
            duplicates,
        })
    }

    /// Records accepted ids (newline-terminated) so that a replay of them is recognised.
    fn remember(&mut self, ids: &str) -> Result<(), QueueError> {
        let path = self.dir.join(RECENT);
        self.recent_file
            .write_all(ids.as_bytes())
            .map_err(io_error(&path))?;
        self.recent_file.sync_data().map_err(io_error(&path))?;
        for id in ids.lines() {
            self.recent.push_back(id.to_string());
            self.recent_set.insert(id.to_string());
            self.recent_logged += 1;
        }
        while self.recent.len() > RECENT_IDS {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        if self.recent_logged > 2 * RECENT_IDS {
            self.compact_recent()?;
        }
        Ok(())
    }

    /// Rewrites the id file with only the remembered ids.
    fn compact_recent(&mut self) -> Result<(), QueueError> {
        let mut text = String::new();
        for id in &self.recent {
            text.push_str(id);
            text.push('\n');
        }
        replace_file(&self.dir, RECENT, &text)?;
        self.recent_file = open_append(&self.dir.join(RECENT))?;
        self.recent_logged = self.recent.len();
        Ok(())
    }

    /// Marks the front entry delivered (or abandoned).
    pub fn pop(&mut self) -> Result<Option<Entry>, QueueError> {
        let Some(entry) = self.pending.pop_front() else {
            return Ok(None);
        };
        self.write_cursor(entry.sequence)?;
        if self.pending.is_empty() || self.logged > 2 * (self.pending.len() as u64).max(512) {
            self.compact()?;
        }
        Ok(Some(entry))
    }

    fn write_cursor(&self, sequence: u64) -> Result<(), QueueError> {
        replace_file(&self.dir, CURSOR, &sequence.to_string())
    }

    /// Rewrites the log with only the pending entries.
    fn compact(&mut self) -> Result<(), QueueError> {
        let mut text = String::new();
        for entry in &self.pending {
            text.push_str(&serde_json::to_string(entry).unwrap_or_default());
            text.push('\n');
        }
        replace_file(&self.dir, LOG, &text)?;
        self.log = open_append(&self.dir.join(LOG))?;
        self.logged = self.pending.len() as u64;
        Ok(())
    }
}

/// Replaces `dir/name` with `text` atomically: a synced temporary file renamed over it.
fn replace_file(dir: &Path, name: &str, text: &str) -> Result<(), QueueError> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(text.as_bytes())
        .map_err(io_error(&temporary))?;
    file.sync_data().map_err(io_error(&temporary))?;
    fs::rename(&temporary, &path).map_err(io_error(&path))
}

fn open_append(path: &Path) -> Result<File, QueueError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u32) -> (String, String, String) {
        (format!("n{n}"), "a".to_string(), format!("{{\"n\":{n}}}"))
    }

    #[test]
    fn undelivered_entries_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut queue = DurableQueue::open(dir.path(), 100).expect("opens");
            queue.push((0..5).map(item).collect()).expect("pushes");
            assert_eq!(
                queue.pop().expect("pops").map(|e| e.notification_id),
                Some("n0".into())
            );
            assert_eq!(
                queue.pop().expect("pops").map(|e| e.notification_id),
                Some("n1".into())
            );
        }
        let mut queue = DurableQueue::open(dir.path(), 100).expect("reopens");
        let ids: Vec<_> = queue
            .pending
            .iter()
            .map(|e| e.notification_id.clone())
            .collect();
        assert_eq!(ids, vec!["n2", "n3", "n4"]);
        queue.push(vec![item(5)]).expect("pushes");
        assert_eq!(
            queue.pending.back().map(|e| e.sequence),
            Some(6),
            "sequences keep increasing"
        );
        while queue.pop().expect("pops").is_some() {}
        let reopened = DurableQueue::open(dir.path(), 100).expect("reopens");
        assert!(reopened.is_empty());
        assert_eq!(
            fs::read_to_string(dir.path().join(LOG)).expect("log"),
            "",
            "compacted once drained"
        );
    }

    #[test]
    fn a_notification_accepted_before_is_not_queued_again_even_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut queue = DurableQueue::open(dir.path(), 100).expect("opens");
            let pushed = queue.push((0..3).map(item).collect()).expect("pushes");
            assert_eq!(pushed.duplicates, 0);
            while queue.pop().expect("pops").is_some() {}
        }
        let mut queue = DurableQueue::open(dir.path(), 100).expect("reopens");
        // A replay produces n1 and n2 again, then n3 (twice in one batch) is new.
        let pushed = queue
            .push(vec![item(1), item(2), item(3), item(3)])
            .expect("pushes");
        assert_eq!(pushed.duplicates, 3);
        let ids: Vec<_> = queue
            .pending
            .iter()
            .map(|e| e.notification_id.clone())
            .collect();
        assert_eq!(ids, vec!["n3"]);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut queue = DurableQueue::open(dir.path(), 3).expect("opens");
            let dropped = queue
                .push((0..5).map(item).collect())
                .expect("pushes")
                .dropped;
            assert_eq!(
                dropped
                    .iter()
                    .map(|e| e.notification_id.as_str())
                    .collect::<Vec<_>>(),
                vec!["n0", "n1"]
            );
            assert_eq!(queue.len(), 3);
        }
        // A crash in the middle of an append.
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .expect("log");
        log.write_all(b"{\"sequence\":6,\"notifica")
            .expect("writes");
        let mut queue = DurableQueue::open(dir.path(), 3).expect("reopens");
        let ids: Vec<_> = queue
            .pending
            .iter()
            .map(|e| e.notification_id.clone())
            .collect();
        assert_eq!(ids, vec!["n2", "n3", "n4"]);
        // Appends after the repair are readable.
        queue.push(vec![item(7)]).expect("pushes");
        drop(queue);
        let queue = DurableQueue::open(dir.path(), 10).expect("reopens");
        assert_eq!(
            queue.pending.back().map(|e| e.notification_id.as_str()),
            Some("n7")
        );
    }
}
