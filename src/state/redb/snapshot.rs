//! Sessions read from a read transaction a chunk at a time (a subject's, or every session
//! just before a delete-all): memory stays flat whatever the file holds.

use super::*;

/// One subject's sessions in a snapshot, in sid order.
pub struct SubjectSnapshot {
    pub(super) txn: ReadTransaction,
    pub(super) generation: Generation,
    pub(super) subject: String,
    pub(super) after: Option<String>,
    pub(super) done: bool,
}

impl BlockingChunks for SubjectSnapshot {
    fn next_chunk_blocking(&mut self, max: usize) -> Result<Option<Entries>> {
        if self.done {
            return Ok(None);
        }
        let index = self
            .txn
            .open_table(self.generation.by_subject())
            .map_err(fail)?;
        let sessions = self
            .txn
            .open_table(self.generation.sessions())
            .map_err(fail)?;
        let subject = self.subject.as_str();
        let range = match &self.after {
            Some(sid) => index
                .range::<IndexKey>((Bound::Excluded((subject, sid.as_str())), Bound::Unbounded)),
            None => index.range::<IndexKey>((subject, "")..),
        }
        .map_err(fail)?;
        let mut out = Vec::with_capacity(max);
        let mut last = None;
        let mut seen = 0;
        for entry in range.take(max) {
            let (k, _) = entry.map_err(fail)?;
            let (s, sid) = k.value();
            if s != subject {
                break;
            }
            seen += 1;
            last = Some(sid.to_string());
            if let Some(v) = sessions.get(sid).map_err(fail)? {
                out.push((sid.to_string(), v.value().to_vec()));
            }
        }
        if seen < max {
            self.done = true;
        }
        self.after = last;
        if seen == 0 {
            return Ok(None);
        }
        Ok(Some(out))
    }
}

pub struct SessionSnapshot {
    pub(super) txn: ReadTransaction,
    pub(super) generation: Generation,
    pub(super) after: Option<String>,
    pub(super) done: bool,
}

impl BlockingChunks for SessionSnapshot {
    fn next_chunk_blocking(&mut self, max: usize) -> Result<Option<Entries>> {
        if self.done {
            return Ok(None);
        }
        let table = self
            .txn
            .open_table(self.generation.sessions())
            .map_err(fail)?;
        let range = match &self.after {
            Some(k) => table.range::<&str>((Bound::Excluded(k.as_str()), Bound::Unbounded)),
            None => table.range::<&str>(..),
        }
        .map_err(fail)?;
        let mut out = Vec::with_capacity(max);
        for entry in range.take(max) {
            let (k, v) = entry.map_err(fail)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        if out.len() < max {
            self.done = true;
        }
        self.after = out.last().map(|(k, _)| k.clone());
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some(out))
    }
}
