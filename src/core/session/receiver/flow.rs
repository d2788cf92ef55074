//! Entry changes queued, applied and held back, files begun, chunks asked
//! for within the limits, stored, and files completed or abandoned.

use std::collections::HashMap;

use xfer_protocol::codec::codec_allowed;
use xfer_protocol::msg::{self, Message};
use xfer_protocol::{FEATURE_ZSTD_STREAM, MAX_ZSTD_STREAMS};

use crate::chunk::FileDigest;
use crate::codec::{Codec, EncodedChunk, StreamDecoder};
use crate::manifest::{EntryKind, Meta, RelPath};
use crate::plan::Op;
use crate::progress::{Change, Event};
use crate::session::destination::{ApplyReport, Destination, EntryError, Put};
use crate::session::{protocol, SessionError};

use super::{FileNeeds, OpenNeed, Queued, Receiver, State, MAX_HELD_CHUNK_REFS};

impl<D: Destination> Receiver<D> {
    pub(super) fn enqueue(&mut self, queued: Queued) -> Result<(), SessionError> {
        self.changes_sent = true;
        if self.delete_limit.is_some() {
            // A type change replaces the entry in one step, with no
            // `Delete`: what it removes is charged all the same.
            let replaces = match &queued {
                Queued::Op(op) => op.removes(self.manifest()).then(|| op.path().clone()),
                Queued::Write { path, .. } => {
                    self.manifest().get(path).is_some_and(|e| matches!(e.kind, EntryKind::Dir)).then(|| path.clone())
                }
            };
            if let Some(path) = replaces {
                self.charge_delete(&path)?;
            }
        }
        if self.delete_limit.is_some() {
            match &queued {
                Queued::Op(Op::Delete { path }) => {
                    self.held_parents.insert(path.parent());
                    return self.hold(queued);
                }
                // A parent's metadata is set after its deletes.
                Queued::Op(Op::SetMeta { path, .. }) if self.held_parents.contains(path) => return self.hold(queued),
                Queued::Op(Op::SetMeta { .. }) => {}
                // A new entry after deletes: they were replacements, which
                // must happen first.
                _ => self.release_held()?,
            }
        }
        self.push_queued(queued)
    }

    /// Holds back a delete (or the metadata that follows it); a sender
    /// cannot make this grow past what the receiving tree holds.
    pub(super) fn hold(&mut self, queued: Queued) -> Result<(), SessionError> {
        if self.held.len() > 2 * (self.manifest().len() + 1) {
            return Err(protocol("more deletes than the receiving tree has entries"));
        }
        self.held.push(queued);
        Ok(())
    }

    pub(super) fn release_held(&mut self) -> Result<(), SessionError> {
        self.held_parents.clear();
        for queued in std::mem::take(&mut self.held) {
            self.push_queued(queued)?;
        }
        Ok(())
    }

    pub(super) fn push_queued(&mut self, queued: Queued) -> Result<(), SessionError> {
        self.progress.emit(|| match &queued {
            Queued::Op(op) => Event::Entry { change: Change::of(op), path: op.path().to_string() },
            Queued::Write { path, .. } => Event::Entry { change: Change::Write, path: path.to_string() },
        });
        if let Queued::Write { digest, .. } = &queued {
            self.queued_refs += digest.chunks.len();
        }
        self.queued_meta_bytes += queued.meta_bytes();
        self.queued.push_back(queued);
        self.pump()
    }

    pub(super) fn receiving(&mut self) -> Result<&mut D, SessionError> {
        self.rx.as_mut().ok_or_else(|| protocol("no destination is open"))
    }

    /// Applies queued changes as far as the limits allow, asks for chunks,
    /// and finishes once everything is in.
    pub(super) fn pump(&mut self) -> Result<(), SessionError> {
        self.start_queued()?;
        self.ask_needs();
        if self.done && self.queued.is_empty() && self.files.is_empty() && self.partial.is_none() {
            self.finish()?;
        }
        Ok(())
    }

    /// Starts queued writes and applies queued ops while the limits allow.
    pub(super) fn start_queued(&mut self) -> Result<(), SessionError> {
        loop {
            match self.queued.front() {
                Some(Queued::Write { .. }) if self.files.len() >= self.limits.files => break,
                Some(Queued::Write { digest, .. })
                    if !self.files.is_empty() && self.in_flight_refs + digest.chunks.len() > MAX_HELD_CHUNK_REFS =>
                {
                    break
                }
                // A full batch commits once the files in flight complete
                // (never with some half-built); starting more meanwhile
                // would let it grow with the whole tree.
                Some(Queued::Write { .. })
                    if !self.files.is_empty() && self.rx.as_ref().is_some_and(|rx| rx.batch_full()) =>
                {
                    break
                }
                // A link waits for its target to be complete and committed.
                Some(Queued::Op(Op::Delete { .. } | Op::SetMeta { .. } | Op::Link { .. }))
                    if !self.files.is_empty() =>
                {
                    break
                }
                None => break,
                _ => {}
            }
            let next = self.queued.pop_front();
            self.queued_meta_bytes -= next.as_ref().map_or(0, Queued::meta_bytes);
            match next {
                Some(Queued::Write { file, path, meta, digest }) => {
                    self.queued_refs -= digest.chunks.len();
                    self.begin(file, path, meta, digest)?
                }
                Some(Queued::Op(op)) => {
                    match &op {
                        Op::Mkdir { .. } => self.counts.dirs += 1,
                        Op::Symlink { .. } => self.counts.symlinks += 1,
                        Op::SetMeta { .. } => self.counts.metas += 1,
                        _ => {}
                    }
                    match self.receiving()?.apply_op(&op) {
                        Ok(()) => {}
                        Err(e) if e.is_per_entry() => self.record_failure(op.path().to_string(), e.to_string()),
                        Err(e) => return Err(SessionError::local(e)),
                    }
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Asks for needed chunks while the outstanding limits allow.
    pub(super) fn ask_needs(&mut self) {
        while self.outstanding < self.limits.chunks
            && (self.outstanding == 0 || self.outstanding_bytes < self.limits.bytes)
        {
            let Some((file, need)) = self.to_ask.pop_front() else { break };
            if self.abandoned.contains(&file) {
                continue;
            }
            let offered = need.signature.is_some();
            let len = u64::from(need.chunk.len);
            if let Some(f) = self.files.get_mut(&file) {
                f.open.insert(need.index as u32, OpenNeed { need: need.need, offered, refined: false, len });
                f.outstanding += 1;
                f.outstanding_bytes += len;
                f.unasked -= 1;
            }
            self.outstanding += 1;
            self.outstanding_bytes += len;
            self.outbox.push_back(Message::NeedChunk(msg::NeedChunk {
                file,
                index: need.index as u32,
                signature: need.signature.map(|s| s.encode()),
            }));
        }
    }

    pub(super) fn begin(
        &mut self,
        file: u32,
        path: RelPath,
        meta: Meta,
        digest: FileDigest,
    ) -> Result<(), SessionError> {
        if self.files.contains_key(&file) || self.abandoned.contains(&file) {
            return Err(protocol(format!("file number {file} used twice")));
        }
        self.progress.emit(|| Event::FileStarted { path: path.to_string(), size: digest.size });
        let begun = self.receiving()?.begin_file(file, &path, &meta, &digest);
        let needs = match begun {
            Ok(needs) => needs,
            Err(e) if e.is_per_entry() => {
                self.record_failure(path.to_string(), e.to_string());
                return Ok(());
            }
            Err(e) => return Err(SessionError::local(e)),
        };
        let refs = digest.chunks.len();
        self.in_flight_refs += refs;
        self.files.insert(
            file,
            FileNeeds { path, open: HashMap::new(), refs, outstanding: 0, outstanding_bytes: 0, unasked: needs.len() },
        );
        self.to_ask.extend(needs.into_iter().map(|need| (file, need)));
        self.complete_if_ready(file)
    }

    pub(super) fn chunk_data(&mut self, stream: Option<u64>, data: msg::ChunkData) -> Result<(), SessionError> {
        let wire_len = data.payload.len() as u64;
        let (file, index) = (data.file, data.index);
        let encoded = self.take_payload(stream, data)?;
        if self.abandoned.contains(&file) {
            return Ok(());
        }
        let Some(f) = self.files.get_mut(&file) else {
            return Err(protocol(format!("chunk for file {file} that is not being received")));
        };
        let Some(&OpenNeed { need, offered, len, .. }) = f.open.get(&index) else {
            return Err(protocol(format!("chunk {index} of file {file} was not asked for")));
        };
        let (chunks, wire, decoded) = self.seen;
        self.seen = (chunks + 1, wire + wire_len, decoded + len);
        self.relimit();
        self.progress.emit(|| Event::Chunk { decoded: u64::from(encoded.decoded_len), encoded: wire_len });
        let put = self.receiving()?.put_chunk(file, need, &encoded, offered);
        match put {
            Ok(Put::Stored(also_ready)) => {
                let f = self.files.get_mut(&file).expect("invariant: looked up above");
                f.open.remove(&index);
                f.outstanding -= 1;
                f.outstanding_bytes -= len;
                self.outstanding -= 1;
                self.outstanding_bytes -= len;
                self.complete_if_ready(file)?;
                // Files that were waiting for this chunk's bytes.
                for file in also_ready {
                    self.complete_if_ready(file)?;
                }
            }
            Ok(Put::RetryWithoutBase) => {
                if let Some(entry) = self.files.get_mut(&file).and_then(|f| f.open.get_mut(&index)) {
                    entry.offered = false;
                }
                self.outbox.push_back(Message::NeedChunk(msg::NeedChunk { file, index, signature: None }));
            }
            Err(e) if e.is_per_entry() => self.abandon(file, &e.to_string()),
            Err(e) => return Err(SessionError::local(e)),
        }
        self.pump()
    }

    /// `data`'s payload as the destination takes it, its codec checked
    /// against the features in effect. A zstd stream chunk is decoded here,
    /// before anything else, even for a chunk then dropped: the sender's
    /// stream went on past it, and so must this side's.
    fn take_payload(&mut self, stream: Option<u64>, data: msg::ChunkData) -> Result<EncodedChunk, SessionError> {
        let features = if self.zstd_stream_agreed { FEATURE_ZSTD_STREAM } else { 0 };
        if !codec_allowed(data.codec, features) {
            return Err(protocol(format!("chunk data with codec {}, which no feature in effect defines", data.codec)));
        }
        let codec = Codec::try_from(data.codec).map_err(protocol)?;
        if codec != Codec::ZstdStream {
            return Ok(EncodedChunk { codec, decoded_len: data.decoded_len, payload: data.payload });
        }
        let decoded = self
            .stream_decoder(stream)?
            .decode(&data.payload, data.decoded_len)
            .map_err(|e| protocol(format!("chunk {} of file {}: {e}: {}", data.index, data.file, error_source(&e))))?;
        Ok(EncodedChunk { codec: Codec::Raw, decoded_len: data.decoded_len, payload: decoded })
    }

    /// The zstd stream decoder of data stream `stream`, made for its first
    /// such chunk; a stream past `MAX_ZSTD_STREAMS`, or a chunk outside any
    /// data stream, is a protocol error.
    fn stream_decoder(&mut self, stream: Option<u64>) -> Result<&mut StreamDecoder, SessionError> {
        let stream = stream.ok_or_else(|| protocol("a zstd stream chunk outside a data stream"))?;
        let at = match self.streams.iter().position(|(id, _)| *id == stream) {
            Some(at) => at,
            None if self.streams.len() >= MAX_ZSTD_STREAMS => {
                return Err(protocol(format!("zstd stream chunks on more than {MAX_ZSTD_STREAMS} data streams")))
            }
            None => {
                self.streams.push((stream, StreamDecoder::new().map_err(SessionError::local)?));
                self.streams.len() - 1
            }
        };
        Ok(&mut self.streams[at].1)
    }

    pub(super) fn refine(&mut self, refine: msg::RefineRequest) -> Result<(), SessionError> {
        // Refinements travel on data streams like FileFailed: a FileFailed
        // for another chunk of the file may have overtaken this one, and the
        // file is then abandoned (as its chunks are, in `chunk_data`).
        if self.abandoned.contains(&refine.file) {
            return Ok(());
        }
        let open = self
            .files
            .get_mut(&refine.file)
            .and_then(|f| f.open.get_mut(&refine.index))
            .ok_or_else(|| protocol("refinement for a chunk not asked for"))?;
        // One refinement per request with a base: each answer can be half a
        // megabyte, and a peer must not be able to ask for them endlessly.
        if !open.offered || open.refined {
            return Err(protocol(format!(
                "refinement of chunk {} of file {} that offered no base or was refined already",
                refine.index, refine.file
            )));
        }
        open.refined = true;
        let need = open.need;
        let fine = self.receiving()?.fine_signatures(refine.file, need, &refine.ranges).unwrap_or_default();
        self.outbox.push_back(Message::FineSignatures(msg::FineSignatures {
            file: refine.file,
            index: refine.index,
            signatures: fine.iter().map(|s| s.encode()).collect(),
        }));
        Ok(())
    }

    /// Completes `file` once nothing is left to ask or receive for it, and
    /// no chunk it waits for from another file in flight is missing.
    pub(super) fn complete_if_ready(&mut self, file: u32) -> Result<(), SessionError> {
        // Counted, not searched: to_ask can hold many thousands.
        let asked_all = self.files.get(&file).is_some_and(|f| f.open.is_empty() && f.unasked == 0);
        if asked_all && self.receiving()?.file_ready(file) {
            self.complete(file)?;
        }
        Ok(())
    }

    pub(super) fn complete(&mut self, file: u32) -> Result<(), SessionError> {
        let completed = self.receiving()?.complete_file(file);
        match completed {
            Ok(()) => {
                if let Some(f) = self.files.remove(&file) {
                    self.in_flight_refs -= f.refs;
                    self.progress.emit(|| Event::FileDone { path: f.path.to_string() });
                }
                Ok(())
            }
            Err(e) if e.is_per_entry() => {
                self.abandon(file, &e.to_string());
                Ok(())
            }
            Err(e) => Err(SessionError::local(e)),
        }
    }

    pub(super) fn abandon(&mut self, file: u32, reason: &str) {
        if let Some(f) = self.files.remove(&file) {
            self.outstanding -= f.outstanding;
            self.outstanding_bytes -= f.outstanding_bytes;
            self.in_flight_refs -= f.refs;
            self.record_failure(f.path.to_string(), reason.to_string());
        }
        self.abandoned.insert(file);
        let Some(rx) = self.rx.as_mut() else { return };
        // Needs of other files that waited for this one's chunks.
        for (other, need) in rx.abandon_file(file, reason) {
            if let Some(f) = self.files.get_mut(&other) {
                f.unasked += 1;
                self.to_ask.push_front((other, need));
            }
        }
    }

    pub(super) fn finish(&mut self) -> Result<(), SessionError> {
        let Some(rx) = self.rx.take() else { return Err(protocol("no destination is open")) };
        // The store's failures are files abandoned here, each already in
        // `failed` (it has none in flight: every file here is done).
        let report = rx.finish(true).map_err(SessionError::local)?;
        self.report(&report);
        Ok(())
    }

    /// The end of a dry run (`DryRun`): nothing was sent to apply, and
    /// nothing is recorded.
    pub(super) fn discard(&mut self) -> Result<(), SessionError> {
        if self.changes_sent || self.partial.is_some() {
            return Err(protocol("DryRun after entry changes"));
        }
        let Some(rx) = self.rx.take() else { return Err(protocol("no destination is open")) };
        let report = rx.discard();
        self.report(&report);
        Ok(())
    }

    /// Queues the summary of `report` (the server's store costs first, in
    /// a push whose client takes them) and ends or awaits the costs.
    fn report(&mut self, report: &ApplyReport) {
        let summary = msg::Summary {
            files_written: report.files_written,
            dirs_created: self.counts.dirs,
            symlinks_written: self.counts.symlinks,
            meta_updated: self.counts.metas,
            deleted: report.entries_deleted,
            failed: self.failed_count,
            bytes_written: report.bytes_reused + report.bytes_fetched,
            // What travelled, counted here: a zstd stream chunk reaches the
            // destination decoded.
            bytes_received: self.seen.1,
            chunks_received: report.chunks_fetched,
            chunks_reused: report.chunks_reused,
            chunks_delta: report.chunks_delta,
            meta_kept: report.meta_kept,
        };
        self.summary = Some(summary);
        // The server's costs come before its summary in a push, after the
        // client's in a pull (the sender then still reads for it).
        let pulled = !self.offer_store_costs;
        if self.costs_agreed && !pulled {
            self.outbox.push_back(Message::StoreCosts(report.store.unwrap_or_default()));
        }
        self.outbox.push_back(Message::Summary(summary));
        self.state = if self.costs_agreed && pulled { State::AwaitingCosts } else { State::Finished };
    }
}

/// What lies under `error`, for a message that says why.
fn error_source(error: &dyn std::error::Error) -> String {
    error.source().map_or_else(String::new, ToString::to_string)
}
