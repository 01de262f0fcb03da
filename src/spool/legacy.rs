//! Spools written by releases before the segment log (format 1): a
//! `queue/ID.env` JSON envelope and a `queue/ID.msg` body per message, and
//! partial files in `tmp/`. At start their messages are stored in the log,
//! then their files removed; a crash half-way imports them again under the
//! same ids, which replay treats as one message.
//!
//! Nothing read here is trusted: an envelope must name its own file, and
//! entries that are not queue files are set aside in `corrupt/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::envelope::Envelope;
use super::log::sync_dir;
use super::{new_queue_id, valid_id, Spool, SpoolError};

/// What importing a format-1 spool did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Messages moved into the log.
    pub messages: usize,
    /// Partial files removed (never acknowledged).
    pub discarded_partial: usize,
    /// Ids whose envelope could not be read, moved to `corrupt/`.
    pub corrupt: Vec<String>,
}

/// Moves every message of a format-1 layout under `dir` into `spool`.
pub fn import(spool: &Spool, dir: &Path) -> Result<Imported, SpoolError> {
    let mut out = Imported::default();
    let (tmp, queue) = (dir.join("tmp"), dir.join("queue"));
    if tmp.is_dir() {
        for entry in fs::read_dir(&tmp)? {
            discard(dir, &entry?.path());
            out.discarded_partial += 1;
        }
        let _ = fs::remove_dir(&tmp);
    }
    if !queue.is_dir() {
        return Ok(out);
    }
    for id in queued_ids(dir, &queue, &mut out)? {
        let env = load(&queue, &id);
        let body = fs::read(queue.join(format!("{id}.msg")));
        match (env, body) {
            (Ok(env), Ok(body)) => {
                spool.store(&env, &body)?;
                out.messages += 1;
                for ext in ["env", "msg"] {
                    let _ = fs::remove_file(queue.join(format!("{id}.{ext}")));
                }
            }
            _ => {
                for ext in ["env", "msg"] {
                    let from = queue.join(format!("{id}.{ext}"));
                    if fs::symlink_metadata(&from).is_ok() {
                        set_aside(dir, &from, "damaged envelope");
                    }
                }
                out.corrupt.push(id);
            }
        }
    }
    sync_dir(&queue)?;
    if fs::remove_dir(&queue).is_ok() {
        sync_dir(dir)?;
    }
    if out.messages > 0 {
        tracing::info!(
            messages = out.messages,
            "messages of a spool in the earlier format (queue/*.env) moved into the segment log"
        );
    }
    Ok(out)
}

/// The ids in `queue/` that have an envelope; bodies without one and
/// entries that are no queue files are cleared away.
fn queued_ids(dir: &Path, queue: &Path, out: &mut Imported) -> io::Result<Vec<String>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(queue)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(id) = name.strip_suffix(".msg") {
            if !queue.join(format!("{id}.env")).exists() {
                discard(dir, &path);
                out.discarded_partial += 1;
            }
        } else if let Some(id) = name.strip_suffix(".env").filter(|id| valid_id(id)) {
            ids.push(id.to_string());
        } else {
            set_aside(dir, &path, "not a queue file");
        }
    }
    ids.sort();
    Ok(ids)
}

/// Reads one format-1 envelope; its `id` field must be its file's name.
fn load(queue: &Path, id: &str) -> Result<Envelope, SpoolError> {
    let bytes = fs::read(queue.join(format!("{id}.env")))?;
    let env: Envelope = serde_json::from_slice(&bytes).map_err(|reason| SpoolError::Damaged {
        id: id.to_string(),
        reason,
    })?;
    if env.id != id {
        return Err(SpoolError::IdMismatch {
            file: id.to_string(),
            field: env.id,
        });
    }
    Ok(env)
}

/// Removes a leftover file (an entry that is no file is set aside); a
/// failure is logged, never fatal.
fn discard(dir: &Path, path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() || m.is_symlink() => {}
        _ => return set_aside(dir, path, "not a file"),
    }
    if let Err(e) = fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover spool file");
    }
}

/// Moves an unexpected entry into `corrupt/` (under its own name when that
/// is free), or removes it when it cannot be moved; logs either way.
pub fn set_aside(dir: &Path, path: &Path, why: &str) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut to: PathBuf = dir.join("corrupt").join(name.unwrap_or_default());
    if fs::symlink_metadata(&to).is_ok() {
        to.as_mut_os_string().push(format!(".{}", new_queue_id()));
    }
    match fs::rename(path, &to) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), to = %to.display(), why, "unexpected spool entry set aside");
        }
        Err(e) => {
            let removed = match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(path),
                _ => fs::remove_file(path),
            };
            tracing::warn!(path = %path.display(), why, error = %e, removed = removed.is_ok(), "unexpected spool entry could not be moved aside");
        }
    }
}
