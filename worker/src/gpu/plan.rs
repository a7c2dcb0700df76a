//! The upload plan: how a mapped snapshot's tensors go to the GPU through
//! a few pinned staging buffers, as a pure function tested on the CPU.
//!
//! The tensors' bytes, in file order (the mapping is read front to back,
//! as readahead likes), are cut into chunks of at most `chunk_bytes`: a
//! chunk fills one staging slot (a copy from the mapping on a CPU thread),
//! then its pieces go to the device asynchronously on one stream. Small
//! tensors share a chunk; a large one spans several. Slots and streams are
//! taken in turn, so while the GPU copies chunk `i`, the CPU fills chunk
//! `i + 1` into another slot. A slot is filled again only after the
//! device's copies out of it have finished: chunk `i` waits for the event
//! recorded after chunk `i - slots` (`Chunk::waits_for`).
//!
//! A chunk is staged from a [`Source`]: the mapping (a copy from mapped
//! pages, each touched first through a page fault), or the file itself
//! (`pread` into the staging buffer: the kernel copies from the page cache
//! with no page fault in this process, and scales better across threads —
//! `cargo bench -p thaw-worker --bench staging` on this 2-core machine,
//! 512 MiB in 4 MiB buffers: 28.2 GiB/s against 21.3 from a fresh mapping
//! on one thread (1.32×), 44.8 against 26.4 on two (1.69×)).

use std::ops::Range;
use std::os::unix::fs::FileExt;

/// One tensor of the mapping: where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorBytes {
    /// Its name (for errors).
    pub name: String,
    /// Its bytes in the mapping.
    pub range: Range<u64>,
}

/// How the upload is staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staging {
    /// Largest chunk: each staging buffer's size.
    pub chunk_bytes: u64,
    /// Pinned staging buffers.
    pub slots: usize,
    /// CUDA streams the copies are spread over.
    pub streams: usize,
}

/// One copy of a chunk: bytes of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The bytes in the mapping.
    pub source: Range<u64>,
    /// The tensor they belong to (its index in the plan's input).
    pub tensor: usize,
    /// Where they go in the tensor.
    pub tensor_offset: u64,
    /// Where they sit in the staging buffer.
    pub staging_offset: u64,
}

/// One staging buffer's worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The pinned buffer it is staged in.
    pub slot: usize,
    /// The stream its device copies run on.
    pub stream: usize,
    /// The chunk whose device copies must finish (its event) before this
    /// one may fill the slot; `None` for a slot's first use.
    pub waits_for: Option<usize>,
    /// Its copies, in staging order, back to back from offset 0.
    pub pieces: Vec<Piece>,
}

impl Chunk {
    /// Bytes staged.
    pub fn bytes(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| p.source.end - p.source.start)
            .sum()
    }

    /// The device copies of this chunk when tensor `t` starts at
    /// `bases[t]` in one device allocation: `(staging offset, device
    /// offset, length)`, neighbours that are contiguous on both sides
    /// merged into one copy.
    pub fn copies(&self, bases: &[u64]) -> Vec<(u64, u64, u64)> {
        self.device_copies(bases, true)
    }

    /// The same, with `merge` false: one copy per piece, for tensors in
    /// allocations of their own (a copy must not cross from one into the
    /// next, even where their addresses meet).
    pub fn device_copies(&self, bases: &[u64], merge: bool) -> Vec<(u64, u64, u64)> {
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        for p in &self.pieces {
            let len = p.source.end - p.source.start;
            let device = bases[p.tensor] + p.tensor_offset;
            match out.last_mut() {
                Some((s, d, l)) if merge && *s + *l == p.staging_offset && *d + *l == device => {
                    *l += len
                }
                _ => out.push((p.staging_offset, device, len)),
            }
        }
        out
    }
}

/// Where a chunk's bytes are staged from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The file's mapping: the bytes copied out of mapped pages.
    Mapped(&'a [u8]),
    /// The file: the bytes read (`pread`) straight into the staging buffer.
    File(&'a std::fs::File),
}

impl Source<'_> {
    /// Fills `staging` with `chunk`'s pieces, each at its staging offset.
    pub fn stage(&self, chunk: &Chunk, staging: &mut [u8]) -> std::io::Result<()> {
        for p in &chunk.pieces {
            let len = (p.source.end - p.source.start) as usize;
            let at = p.staging_offset as usize;
            let to = staging.get_mut(at..at + len).ok_or_else(|| {
                std::io::Error::other(format!("a piece ends past the staging buffer: {p:?}"))
            })?;
            match self {
                Source::Mapped(bytes) => {
                    let from = bytes
                        .get(p.source.start as usize..p.source.end as usize)
                        .ok_or_else(|| {
                            std::io::Error::other(format!("a piece ends past the mapping: {p:?}"))
                        })?;
                    to.copy_from_slice(from);
                }
                Source::File(file) => file.read_exact_at(to, p.source.start)?,
            }
        }
        Ok(())
    }
}

/// Why there is no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A staging knob is zero.
    #[error("chunk size, staging slots and streams must all be at least 1")]
    Empty,
    /// Two tensors claim the same bytes (a corrupt header).
    #[error("tensors {0:?} and {1:?} overlap in the mapping")]
    Overlap(String, String),
    /// A range ends before it starts.
    #[error("tensor {0:?} has a reversed byte range")]
    Reversed(String),
}

/// The tensors of a safetensors file (its bytes): each one's byte range in
/// the file, in file order.
pub fn safetensors_tensors(file: &[u8]) -> Result<Vec<TensorBytes>, String> {
    let size: [u8; 8] = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than a safetensors header")?;
    let data = u64::from_le_bytes(size)
        .checked_add(8)
        .filter(|&d| d <= file.len() as u64)
        .ok_or("the header's length runs past the file")?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&file[8..data as usize]).map_err(|e| format!("header: {e}"))?;
    let mut tensors = Vec::new();
    for (name, info) in header.iter().filter(|(n, _)| *n != "__metadata__") {
        let offsets = info["data_offsets"]
            .as_array()
            .and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)))
            .ok_or_else(|| format!("tensor {name:?} has no data_offsets"))?;
        let range = data + offsets.0..data + offsets.1;
        if range.end > file.len() as u64 || range.end < range.start {
            return Err(format!("tensor {name:?} lies outside the file"));
        }
        tensors.push(TensorBytes {
            name: name.clone(),
            range,
        });
    }
    tensors.sort_by_key(|t| t.range.start);
    Ok(tensors)
}

/// The ordered copy plan for `tensors` under `staging`.
pub fn plan(tensors: &[TensorBytes], staging: Staging) -> Result<Vec<Chunk>, PlanError> {
    if staging.chunk_bytes == 0 || staging.slots == 0 || staging.streams == 0 {
        return Err(PlanError::Empty);
    }
    if let Some(t) = tensors.iter().find(|t| t.range.end < t.range.start) {
        return Err(PlanError::Reversed(t.name.clone()));
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].range.start, tensors[i].range.end));
    for pair in order.windows(2) {
        let (a, b) = (&tensors[pair[0]], &tensors[pair[1]]);
        if b.range.start < a.range.end && !a.range.is_empty() && !b.range.is_empty() {
            return Err(PlanError::Overlap(a.name.clone(), b.name.clone()));
        }
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut current: Vec<Piece> = Vec::new();
    let mut used = 0u64;
    let mut close = |pieces: &mut Vec<Piece>, used: &mut u64| {
        let i = chunks.len();
        chunks.push(Chunk {
            slot: i % staging.slots,
            stream: i % staging.streams,
            waits_for: i.checked_sub(staging.slots),
            pieces: std::mem::take(pieces),
        });
        *used = 0;
    };
    for &t in &order {
        let range = &tensors[t].range;
        let mut at = range.start;
        while at < range.end {
            let take = (range.end - at).min(staging.chunk_bytes - used);
            current.push(Piece {
                source: at..at + take,
                tensor: t,
                tensor_offset: at - range.start,
                staging_offset: used,
            });
            used += take;
            at += take;
            if used == staging.chunk_bytes {
                close(&mut current, &mut used);
            }
        }
    }
    if !current.is_empty() {
        close(&mut current, &mut used);
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_and_the_file_stage_the_same_bytes() {
        use std::io::Write;
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(&bytes).expect("written");
        let ts = tensors(&[(0, 10), (10, 40_000), (40_000, 40_001), (50_000, 100_000)]);
        let chunks = plan(&ts, staging(4096, 3, 2)).expect("a plan");
        for chunk in &chunks {
            let mut mapped = vec![0u8; 4096];
            let mut read = vec![1u8; 4096];
            Source::Mapped(&bytes)
                .stage(chunk, &mut mapped)
                .expect("staged from the mapping");
            Source::File(&file)
                .stage(chunk, &mut read)
                .expect("staged from the file");
            let n = chunk.bytes() as usize;
            assert_eq!(mapped[..n], read[..n]);
            let first = &chunk.pieces[0].source;
            assert_eq!(mapped[0], bytes[first.start as usize]);
        }
        // A file shorter than the plan: an error, not short data.
        file.set_len(60_000).expect("truncated");
        let last = chunks.last().expect("chunks");
        assert!(Source::File(&file)
            .stage(last, &mut vec![0u8; 4096])
            .is_err());
        assert!(Source::Mapped(&bytes[..60_000])
            .stage(last, &mut vec![0u8; 4096])
            .is_err());
    }

    fn tensors(ranges: &[(u64, u64)]) -> Vec<TensorBytes> {
        ranges
            .iter()
            .enumerate()
            .map(|(i, &(s, e))| TensorBytes {
                name: format!("t{i}"),
                range: s..e,
            })
            .collect()
    }

    fn staging(chunk_bytes: u64, slots: usize, streams: usize) -> Staging {
        Staging {
            chunk_bytes,
            slots,
            streams,
        }
    }

    /// Every property a plan must have, checked byte by byte.
    fn check(ts: &[TensorBytes], s: Staging, chunks: &[Chunk]) {
        // Every tensor byte exactly once, to the right place.
        let mut seen: Vec<Vec<u32>> = ts
            .iter()
            .map(|t| vec![0; (t.range.end - t.range.start) as usize])
            .collect();
        for (i, c) in chunks.iter().enumerate() {
            assert!(c.bytes() <= s.chunk_bytes, "chunk {i} too big: {c:?}");
            assert!(c.bytes() > 0, "chunk {i} is empty");
            assert!(c.slot < s.slots && c.stream < s.streams);
            let mut staged = 0;
            for p in &c.pieces {
                assert_eq!(p.staging_offset, staged, "pieces back to back: {c:?}");
                staged += p.source.end - p.source.start;
                let t = &ts[p.tensor];
                assert_eq!(p.source.start - t.range.start, p.tensor_offset);
                assert!(p.source.end <= t.range.end);
                for b in p.tensor_offset..p.tensor_offset + (p.source.end - p.source.start) {
                    seen[p.tensor][b as usize] += 1;
                }
            }
            // A slot is refilled only after the chunk that last used it.
            let previous = chunks[..i].iter().rposition(|o| o.slot == c.slot);
            assert_eq!(c.waits_for, previous, "chunk {i}");
        }
        for (t, bytes) in seen.iter().enumerate() {
            assert!(bytes.iter().all(|&n| n == 1), "tensor {t}: {bytes:?}");
        }
        // Front to back through the mapping.
        let starts: Vec<u64> = chunks
            .iter()
            .flat_map(|c| c.pieces.iter().map(|p| p.source.start))
            .collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
    }

    #[test]
    fn plans_cover_every_byte_once_within_the_chunk_size() {
        let cases: &[(&[(u64, u64)], Staging)] = &[
            (&[(0, 100)], staging(30, 2, 2)),
            (
                &[(0, 10), (16, 20), (20, 90), (128, 300)],
                staging(64, 3, 2),
            ),
            (&[(0, 64), (64, 128)], staging(64, 1, 1)),
            (&[(500, 501), (0, 7), (7, 7), (100, 400)], staging(50, 4, 3)),
            (&[(0, 1000)], staging(1, 2, 5)),
            (&[], staging(8, 2, 2)),
        ];
        for (ranges, s) in cases {
            let ts = tensors(ranges);
            let chunks = plan(&ts, *s).expect("a plan");
            check(&ts, *s, &chunks);
        }
    }

    #[test]
    fn small_tensors_share_a_staging_buffer() {
        // Five 10-byte tensors (aligned to 16) and a 100-byte one, 64-byte chunks.
        let ts = tensors(&[(0, 10), (16, 26), (32, 42), (48, 58), (64, 74), (80, 180)]);
        let chunks = plan(&ts, staging(64, 2, 2)).expect("a plan");
        check(&ts, staging(64, 2, 2), &chunks);
        let tensors_of = |c: &Chunk| c.pieces.iter().map(|p| p.tensor).collect::<Vec<_>>();
        assert_eq!(tensors_of(&chunks[0]), [0, 1, 2, 3, 4, 5]);
        assert_eq!(chunks[0].bytes(), 64);
        assert_eq!(chunks.len(), 3, "150 bytes in 64-byte chunks: {chunks:?}");
    }

    #[test]
    fn slots_and_streams_rotate_and_each_slot_waits_for_its_last_copy() {
        let ts = tensors(&[(0, 700)]);
        let chunks = plan(&ts, staging(100, 3, 2)).expect("a plan");
        let rows: Vec<(usize, usize, Option<usize>)> = chunks
            .iter()
            .map(|c| (c.slot, c.stream, c.waits_for))
            .collect();
        assert_eq!(
            rows,
            [
                (0, 0, None),
                (1, 1, None),
                (2, 0, None),
                (0, 1, Some(0)),
                (1, 0, Some(1)),
                (2, 1, Some(2)),
                (0, 0, Some(3)),
            ]
        );
    }

    #[test]
    fn contiguous_pieces_become_one_device_copy() {
        let ts = tensors(&[(0, 10), (16, 26), (26, 40)]);
        let chunks = plan(&ts, staging(64, 1, 1)).expect("a plan");
        assert_eq!(chunks.len(), 1);
        // Packed back to back on the device: one copy.
        assert_eq!(chunks[0].copies(&[0, 10, 20]), [(0, 0, 34)]);
        // A gap on the device: two copies.
        assert_eq!(chunks[0].copies(&[0, 16, 26]), [(0, 0, 10), (10, 16, 24)]);
        // Tensors in allocations of their own: one copy per piece, even
        // where the addresses meet.
        assert_eq!(
            chunks[0].device_copies(&[0, 10, 20], false),
            [(0, 0, 10), (10, 10, 10), (20, 20, 14)]
        );
    }

    #[test]
    fn safetensors_headers_give_the_tensors_ranges() {
        let header = br#"{"__metadata__":{"k":"v"},"b":{"dtype":"U8","shape":[3],"data_offsets":[4,7]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        let data = file.len() as u64;
        file.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
        let ts = safetensors_tensors(&file).expect("parses");
        assert_eq!(
            ts,
            [
                TensorBytes {
                    name: "a".into(),
                    range: data..data + 4
                },
                TensorBytes {
                    name: "b".into(),
                    range: data + 4..data + 7
                },
            ]
        );
        assert!(
            safetensors_tensors(&file[..file.len() - 1]).is_err(),
            "truncated"
        );
        assert!(safetensors_tensors(&file[..5]).is_err());
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(
            plan(&tensors(&[(0, 10)]), staging(0, 1, 1)),
            Err(PlanError::Empty)
        );
        assert_eq!(
            plan(&tensors(&[(0, 10)]), staging(8, 0, 1)),
            Err(PlanError::Empty)
        );
        assert_eq!(
            plan(&tensors(&[(0, 10), (5, 20)]), staging(8, 1, 1)),
            Err(PlanError::Overlap("t0".into(), "t1".into()))
        );
        assert_eq!(
            plan(&tensors(&[(10, 5)]), staging(8, 1, 1)),
            Err(PlanError::Reversed("t0".into()))
        );
    }
}
