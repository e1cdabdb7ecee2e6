//! Recompression of checkpoints: bit-exact codecs whose every decode is verified against the
//! blake3 hash of the original bytes, so a truncated or flipped file is an error, never a wrong
//! tensor; plus post-training quantization (lossy, explicitly separate) and a benchmark.
//!
//! Codecs:
//! - `evolve-fp` (default): parses the safetensors header and splits F32/BF16/F16 tensors into
//!   fields. The exponent of trained weights carries ~2.6 of its 8 bits and is coded with a
//!   hand-written order-0 rANS coder; mantissa fields are near-random and stored raw unless an
//!   entropy coder measurably pays. Header, integer tensors and non-safetensors input go to zstd.
//! - `zstd`: plain zstd level 3, the baseline, in the same chunked container.
//! - Delta (`encode_delta`): either codec applied to the XOR of each tensor with the parent's
//!   tensor of the same name, dtype and shape; the high bits of the XOR are mostly zero after a
//!   fine-tuning cycle.
//!
//! Container v3 (`EVOLVEZ3`; v2, `EVOLVEZ2`, differs only in 8-lane rANS streams): magic (its last byte is the version), codec, flags, chunk size,
//! raw length, blake3 of the raw bytes, [blake3 of the parent], chunk table (coded length and
//! an 8-byte blake3 prefix per chunk), an 8-byte checksum of all of the above, then the chunks.
//! The header checksum is verified before any size in it is trusted; the per-chunk prefixes
//! catch flips a sub-coder would silently tolerate (zstd ignores some bits). Chunks are 1 MiB
//! of raw bytes, coded and decoded independently on all cores; the whole-file blake3 is
//! assembled from per-chunk subtree hashes (blake3's tree mode), so verification runs in
//! parallel too. `EVOLVEZ1` and `EVOLVEZ2` containers from earlier runs still decode.
//!
//! `lowrank` (truncated-SVD prediction + XOR residual) is a measurement, not a codec: on the
//! real run's checkpoints and their deltas it never beat plain evolve-fp by more than noise.
//! `bench` produces the comparison table behind `evolve bench compress`.
//!
//! Architecture invariants:
//! - Bytes in, bytes out: no knowledge of models or the ledger. The container is self-describing,
//!   so `decode` needs nothing else (a delta needs its parent, which it identifies by hash).
//! - No decode returns bytes whose blake3 differs from the one recorded at encode time; no input,
//!   however corrupt, makes decode panic or allocate more than the (checksummed) header declares.
//! - The safetensors layout is only a hint: every byte of the input is covered by exactly one
//!   coded segment whatever the header says, so odd files cost ratio, never correctness.
//! - Quantization (`quant`) is lossy and never goes through `encode`/`decode`; its output is an
//!   ordinary safetensors file that the lossless codecs can then store.

mod chunk;
mod layout;
mod rans;
mod varint;

pub mod bench;
pub mod lowrank;
pub mod quant;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};

use chunk::Plan;

const MAGIC_V1: &[u8; 8] = b"EVOLVEZ1";
const MAGIC_V2: &[u8; 8] = b"EVOLVEZ2";
/// Same layout as v2; rANS streams have 16 lanes instead of 8 (vector decoding), a varint
/// frequency table and delta-coded lane lengths. Written now.
const MAGIC_V3: &[u8; 8] = b"EVOLVEZ3";
const FLAG_DELTA: u8 = 1;
/// 1 MiB chunks: big enough that per-chunk tables cost <0.1%, small enough to spread a 4 MB
/// checkpoint over cores. A power of two so chunks are whole blake3 subtrees.
const DEFAULT_CHUNK_LOG2: u8 = 20;
/// Refuse headers declaring more than 1 TiB: no checkpoint we store is that big, and it bounds
/// allocation even for a header that passes its checksum by accident.
const MAX_RAW_LEN: u64 = 1 << 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    /// Plain zstd level 3 (baseline).
    Zstd,
    /// Field-split floats with rANS-coded exponents; zstd for everything else.
    #[default]
    EvolveFp,
}

impl Codec {
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::EvolveFp => "evolve-fp",
        }
    }

    pub fn from_name(name: &str) -> Option<Codec> {
        [Codec::Zstd, Codec::EvolveFp].into_iter().find(|c| c.name() == name)
    }

    fn id(&self) -> u8 {
        match self {
            Codec::Zstd => 1,
            Codec::EvolveFp => 3,
        }
    }

    fn from_id(id: u8) -> Option<Codec> {
        match id {
            1 => Some(Codec::Zstd),
            3 => Some(Codec::EvolveFp),
            _ => None,
        }
    }

    fn plan(&self, v3: bool) -> Plan {
        Plan { zstd_only: *self == Codec::Zstd, v3 }
    }
}


#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("not an evolve-compressed file (bad magic)")]
    BadMagic,
    #[error("compressed file is truncated ({0})")]
    Truncated(&'static str),
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    #[error("container header is corrupt (checksum mismatch or impossible sizes): {0}")]
    BadHeader(String),
    #[error("corrupt compressed section: {0}")]
    Corrupt(String),
    #[error("decoded bytes hash to {found}, expected {expected}: the compressed file is corrupt")]
    HashMismatch { expected: String, found: String },
    #[error("this is a delta against parent {0}; decode it with decode_delta and the parent's bytes")]
    NeedsParent(String),
    #[error("wrong parent: the delta was coded against {expected}, the bytes given hash to {found}")]
    WrongParent { expected: String, found: String },
    #[error("not a delta container: decode it with decode")]
    NotDelta,
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Tuning knobs; `Default` uses every core and 1 MiB chunks.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Worker threads; 0 means all available cores.
    pub threads: usize,
    /// log2 of the chunk size in bytes, 10..=26.
    pub chunk_log2: u8,
    /// Called from the workers with the raw bytes of each chunk as it is coded or decoded (a
    /// progress bar's tick; a plain `fn` keeps `Options` `Copy`).
    pub progress: Option<fn(u64)>,
}

impl Default for Options {
    fn default() -> Self {
        Options { threads: 0, chunk_log2: DEFAULT_CHUNK_LOG2, progress: None }
    }
}

impl Options {
    fn workers(&self, jobs: usize) -> usize {
        let all = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let t = if self.threads == 0 { all } else { self.threads };
        t.clamp(1, jobs.max(1))
    }
}

/// Sizes and timings of one round trip, for the ledger.
#[derive(Clone, Debug)]
pub struct RoundTrip {
    pub codec: Codec,
    pub encoded: Vec<u8>,
    pub raw_bytes: usize,
    pub encode_ms: f64,
    pub decode_ms: f64,
    /// Hash of the decoded bytes; equal to the input's hash, or `round_trip` would have failed.
    pub verified_hash: String,
    /// Hash of the parent when this is a delta.
    pub parent_hash: Option<String>,
}

/// Encodes, decodes again and verifies: what gets stored is known to restore bit-exactly.
pub fn round_trip(raw: &[u8], codec: Codec) -> Result<RoundTrip, CompressError> {
    round_trip_inner(raw, None, codec)
}

/// As `round_trip`, coding `raw` as a delta against `parent`.
pub fn round_trip_delta(raw: &[u8], parent: &[u8], codec: Codec) -> Result<RoundTrip, CompressError> {
    round_trip_inner(raw, Some(parent), codec)
}

fn round_trip_inner(raw: &[u8], parent: Option<&[u8]>, codec: Codec) -> Result<RoundTrip, CompressError> {
    let opts = Options::default();
    let t = Instant::now();
    let encoded = encode_with(raw, parent, codec, opts)?;
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let decoded = decode_with(&encoded, parent, opts)?;
    let decode_ms = t.elapsed().as_secs_f64() * 1e3;
    if decoded != raw {
        // Unreachable unless blake3 collides; checked because it is cheap next to decoding.
        return Err(CompressError::Corrupt("round trip differs from the input".into()));
    }
    Ok(RoundTrip {
        codec,
        raw_bytes: raw.len(),
        encoded,
        encode_ms,
        decode_ms,
        verified_hash: blake3::hash(&decoded).to_hex().to_string(),
        parent_hash: parent.map(|p| blake3::hash(p).to_hex().to_string()),
    })
}

/// Self-contained encoding with default options. Infallible for inputs below 1 TiB.
pub fn encode(raw: &[u8], codec: Codec) -> Vec<u8> {
    encode_with(raw, None, codec, Options::default()).expect("inputs below 1 TiB always encode")
}

/// Encodes `raw` as a delta against `parent` (tensors matched by name, dtype and shape).
pub fn encode_delta(raw: &[u8], parent: &[u8], codec: Codec) -> Vec<u8> {
    encode_with(raw, Some(parent), codec, Options::default()).expect("inputs below 1 TiB always encode")
}

/// Decodes a self-contained container and verifies it against the recorded hash.
pub fn decode(encoded: &[u8]) -> Result<Vec<u8>, CompressError> {
    decode_with(encoded, None, Options::default())
}

/// Decodes a delta container given the parent's bytes; errors if they are not the parent it was
/// coded against.
pub fn decode_delta(encoded: &[u8], parent: &[u8]) -> Result<Vec<u8>, CompressError> {
    if !(encoded.starts_with(MAGIC_V2) || encoded.starts_with(MAGIC_V3)) || Header::parse(encoded)?.0.parent.is_none() {
        return Err(CompressError::NotDelta);
    }
    decode_with(encoded, Some(parent), Options::default())
}

/// Runs `f(i)` for `i in 0..n` on `threads` scoped workers pulling indices from a shared counter
/// (chunks differ in cost, so static partitioning would leave a core idle).
fn par_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if threads <= 1 || n <= 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<T>>> = (0..n).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let v = f(i);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
                }
            });
        }
    });
    slots.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every index ran")).collect()
}

/// blake3 of a whole file from the chaining values of its `chunk`-sized pieces, following
/// blake3's tree shape (left subtree = largest power of two of 1 KiB chunks below the length).
fn root_hash(cvs: &[ChainingValue], len: u64, chunk: u64) -> blake3::Hash {
    fn node(cvs: &[ChainingValue], len: u64, chunk: u64) -> ChainingValue {
        if cvs.len() == 1 {
            return cvs[0];
        }
        let left = left_subtree_len(len);
        let k = (left / chunk) as usize;
        merge_subtrees_non_root(&node(&cvs[..k], left, chunk), &node(&cvs[k..], len - left, chunk), Mode::Hash)
    }
    let left = left_subtree_len(len);
    let k = (left / chunk) as usize;
    merge_subtrees_root(&node(&cvs[..k], left, chunk), &node(&cvs[k..], len - left, chunk), Mode::Hash)
}

/// Parallel blake3 of `raw`, identical to `blake3::hash`.
fn hash_chunks(raw: &[u8], chunk_log2: u8, threads: usize) -> blake3::Hash {
    let c = 1usize << chunk_log2;
    if raw.len() <= c {
        return blake3::hash(raw);
    }
    let pieces: Vec<&[u8]> = raw.chunks(c).collect();
    let cvs = par_map(pieces.len(), threads, |i| cv_of(pieces[i], i, c));
    root_hash(&cvs, raw.len() as u64, c as u64)
}

fn cv_of(piece: &[u8], i: usize, c: usize) -> ChainingValue {
    blake3::Hasher::new().set_input_offset((i * c) as u64).update(piece).finalize_non_root()
}

fn check8(b: &[u8]) -> [u8; 8] {
    blake3::hash(b).as_bytes()[..8].try_into().expect("8 bytes")
}

struct Header {
    /// `EVOLVEZ3` (else `EVOLVEZ2`).
    v3: bool,
    codec: Codec,
    chunk_log2: u8,
    raw_len: u64,
    hash: blake3::Hash,
    parent: Option<blake3::Hash>,
    chunk_lens: Vec<u32>,
    /// First 8 bytes of blake3 of each coded chunk: a flip that a sub-coder would tolerate
    /// (zstd ignores some bits) is still an error, and a corrupt chunk is named before decoding.
    chunk_checks: Vec<[u8; 8]>,
}

fn n_chunks(raw_len: u64, chunk_log2: u8) -> u64 {
    raw_len.div_ceil(1 << chunk_log2)
}

impl Header {
    fn write(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(100 + 12 * self.chunk_lens.len());
        out.extend_from_slice(if self.v3 { MAGIC_V3 } else { MAGIC_V2 });
        out.push(self.codec.id());
        out.push(if self.parent.is_some() { FLAG_DELTA } else { 0 });
        out.push(self.chunk_log2);
        out.push(0);
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(self.hash.as_bytes());
        if let Some(p) = &self.parent {
            out.extend_from_slice(p.as_bytes());
        }
        out.extend_from_slice(&(self.chunk_lens.len() as u32).to_le_bytes());
        for (l, c) in self.chunk_lens.iter().zip(&self.chunk_checks) {
            out.extend_from_slice(&l.to_le_bytes());
            out.extend_from_slice(c);
        }
        let check = blake3::hash(&out);
        out.extend_from_slice(&check.as_bytes()[..8]);
        out
    }

    /// Parses and checksums the header; returns it and where the chunk payloads start. Nothing
    /// is allocated from header fields before the checksum has passed.
    fn parse(b: &[u8]) -> Result<(Header, usize), CompressError> {
        let get = |a: usize, n: usize, what: &'static str| b.get(a..a + n).ok_or(CompressError::Truncated(what));
        let magic = get(0, 8, "magic").map_err(|_| CompressError::BadMagic)?;
        if magic != MAGIC_V2 && magic != MAGIC_V3 {
            return Err(CompressError::BadMagic);
        }
        let v3 = magic == MAGIC_V3;
        let fixed = get(8, 12, "header")?;
        let (codec_id, flags, chunk_log2) = (fixed[0], fixed[1], fixed[2]);
        let raw_len = u64::from_le_bytes(fixed[4..12].try_into().expect("8 bytes"));
        let mut at = 20;
        let hash = blake3::Hash::from_bytes(get(at, 32, "hash")?.try_into().expect("32 bytes"));
        at += 32;
        let parent = if flags & FLAG_DELTA != 0 {
            let p = blake3::Hash::from_bytes(get(at, 32, "parent hash")?.try_into().expect("32 bytes"));
            at += 32;
            Some(p)
        } else {
            None
        };
        let n = u32::from_le_bytes(get(at, 4, "chunk count")?.try_into().expect("4 bytes")) as usize;
        at += 4;
        let table_end = n.checked_mul(12).and_then(|t| t.checked_add(at)).ok_or(CompressError::Truncated("chunk table"))?;
        let check = get(table_end, 8, "chunk table")?;
        if &blake3::hash(&b[..table_end]).as_bytes()[..8] != check {
            return Err(CompressError::BadHeader("header checksum mismatch".into()));
        }
        let codec = Codec::from_id(codec_id).ok_or(CompressError::UnknownCodec(codec_id))?;
        if !(10..=26).contains(&chunk_log2) || flags & !FLAG_DELTA != 0 || raw_len > MAX_RAW_LEN || n as u64 != n_chunks(raw_len, chunk_log2) {
            return Err(CompressError::BadHeader(format!("{n} chunks of 2^{chunk_log2} bytes for {raw_len} bytes")));
        }
        let table = &b[at..table_end];
        let chunk_lens = table.chunks_exact(12).map(|c| u32::from_le_bytes(c[..4].try_into().expect("4 bytes"))).collect();
        let chunk_checks = table.chunks_exact(12).map(|c| c[4..].try_into().expect("8 bytes")).collect();
        Ok((Header { v3, codec, chunk_log2, raw_len, hash, parent, chunk_lens, chunk_checks }, table_end + 8))
    }
}

/// Encodes with explicit options; `parent` makes it a delta.
pub fn encode_with(raw: &[u8], parent: Option<&[u8]>, codec: Codec, opts: Options) -> Result<Vec<u8>, CompressError> {
    encode_version(raw, parent, codec, opts, true)
}

/// `encode_with`, writing `EVOLVEZ3` or (for tests of old containers) `EVOLVEZ2`.
fn encode_version(raw: &[u8], parent: Option<&[u8]>, codec: Codec, opts: Options, v3: bool) -> Result<Vec<u8>, CompressError> {
    if raw.len() as u64 > MAX_RAW_LEN {
        return Err(CompressError::Invalid(format!("{} bytes is above the 1 TiB container limit", raw.len())));
    }
    if !(10..=26).contains(&opts.chunk_log2) {
        return Err(CompressError::Invalid(format!("chunk_log2 {} outside 10..=26", opts.chunk_log2)));
    }
    let c = 1usize << opts.chunk_log2;
    let runs = layout::runs(raw, parent, codec == Codec::EvolveFp);
    let n = n_chunks(raw.len() as u64, opts.chunk_log2) as usize;
    let threads = opts.workers(n);
    let plan = codec.plan(v3);
    // Each worker codes a chunk and hashes it while it is still in cache.
    let coded = par_map(n, threads, |i| {
        let (c0, c1) = (i * c, ((i + 1) * c).min(raw.len()));
        let coded = (chunk::encode_chunk(raw, parent, &runs, c0, c1, plan), cv_of(&raw[c0..c1], i, c));
        if let Some(tick) = opts.progress {
            tick((c1 - c0) as u64);
        }
        coded
    });
    let hash = if n <= 1 { blake3::hash(raw) } else { root_hash(&coded.iter().map(|x| x.1).collect::<Vec<_>>(), raw.len() as u64, c as u64) };
    let chunk_lens = coded.iter().map(|(b, _)| u32::try_from(b.len()).map_err(|_| CompressError::Invalid("chunk grew past 4 GiB".into()))).collect::<Result<Vec<_>, _>>()?;
    let chunk_checks = coded.iter().map(|(b, _)| check8(b)).collect();
    let header = Header { v3, codec, chunk_log2: opts.chunk_log2, raw_len: raw.len() as u64, hash, parent: parent.map(blake3::hash), chunk_lens, chunk_checks };
    let mut out = header.write();
    out.reserve(coded.iter().map(|(b, _)| b.len()).sum());
    for (b, _) in &coded {
        out.extend_from_slice(b);
    }
    Ok(out)
}

/// The decoded size a container declares (its header is checksummed), for progress bars; `None`
/// for anything that is not a current container.
pub fn raw_len(encoded: &[u8]) -> Option<u64> {
    if !(encoded.starts_with(MAGIC_V2) || encoded.starts_with(MAGIC_V3)) {
        return None;
    }
    Header::parse(encoded).ok().map(|(h, _)| h.raw_len)
}

/// Decodes with explicit options; `parent` is required exactly for delta containers.
pub fn decode_with(encoded: &[u8], parent: Option<&[u8]>, opts: Options) -> Result<Vec<u8>, CompressError> {
    if encoded.starts_with(MAGIC_V1) {
        return legacy::decode(encoded);
    }
    let (h, start) = Header::parse(encoded)?;
    match (&h.parent, parent) {
        (Some(p), None) => Err(CompressError::NeedsParent(p.to_hex().to_string())),
        (None, Some(_)) => Err(CompressError::NotDelta),
        (None, None) => decode_body(encoded, &h, start, None, opts),
        (Some(expected), Some(given)) => {
            // Checked up front although a wrong parent could never produce the recorded hash:
            // a parent differing only in bytes no segment reads would otherwise be accepted,
            // and the contract is that the wrong parent is an error, not merely harmless.
            let found = hash_chunks(given, opts.chunk_log2.clamp(10, 26), opts.workers(usize::MAX));
            if found != *expected {
                return Err(CompressError::WrongParent { expected: expected.to_hex().to_string(), found: found.to_hex().to_string() });
            }
            decode_body(encoded, &h, start, Some(given), opts)
        }
    }
}

fn decode_body(encoded: &[u8], h: &Header, start: usize, parent: Option<&[u8]>, opts: Options) -> Result<Vec<u8>, CompressError> {
    let total: u64 = h.chunk_lens.iter().map(|&l| l as u64).sum();
    if total != (encoded.len() - start) as u64 {
        return Err(if total > (encoded.len() - start) as u64 { CompressError::Truncated("chunks") } else { CompressError::Corrupt("trailing bytes after the last chunk".into()) });
    }
    let mut offsets = Vec::with_capacity(h.chunk_lens.len());
    let mut at = start;
    for &l in &h.chunk_lens {
        offsets.push((at, at + l as usize));
        at += l as usize;
    }
    let c = 1usize << h.chunk_log2;
    let mut raw = vec![0u8; h.raw_len as usize];
    let slots: Vec<Mutex<&mut [u8]>> = raw.chunks_mut(c).map(Mutex::new).collect();
    let plan = h.codec.plan(h.v3);
    let n = slots.len();
    let results = par_map(n, opts.workers(n), |i| {
        let mut dst = slots[i].lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = offsets[i];
        if check8(&encoded[a..b]) != h.chunk_checks[i] {
            return Err(CompressError::Corrupt(format!("chunk {i} fails its checksum")));
        }
        chunk::decode_chunk(&encoded[a..b], parent, &mut dst, plan).map_err(|e| match e {
            CompressError::Corrupt(m) => CompressError::Corrupt(format!("chunk {i}: {m}")),
            e => e,
        })?;
        if let Some(tick) = opts.progress {
            tick(dst.len() as u64);
        }
        Ok::<_, CompressError>(cv_of(&dst, i, c))
    });
    drop(slots);
    let cvs = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let found = if n <= 1 { blake3::hash(&raw) } else { root_hash(&cvs, h.raw_len, c as u64) };
    if found != h.hash {
        return Err(CompressError::HashMismatch { expected: h.hash.to_hex().to_string(), found: found.to_hex().to_string() });
    }
    Ok(raw)
}

/// Reader for `EVOLVEZ1` containers (codecs `zstd` = 1 and `byteplane-zstd` = 2) written by
/// earlier runs; no longer written.
mod legacy {
    use super::CompressError;

    pub fn decode(encoded: &[u8]) -> Result<Vec<u8>, CompressError> {
        let mut at = 8usize;
        let mut take = |n: usize, what: &'static str| -> Result<&[u8], CompressError> {
            let s = encoded.get(at..).and_then(|b| b.get(..n)).ok_or(CompressError::Truncated(what))?;
            at += n;
            Ok(s)
        };
        let id = take(1, "codec")?[0];
        let raw_len = u64::from_le_bytes(take(8, "length")?.try_into().expect("8 bytes"));
        let expected = blake3::Hash::from_bytes(take(32, "hash")?.try_into().expect("32 bytes"));
        let n = u32::from_le_bytes(take(4, "section count")?.try_into().expect("4 bytes")) as usize;
        let want = match id {
            1 => 1,
            2 => 6,
            _ => return Err(CompressError::UnknownCodec(id)),
        };
        if n != want {
            return Err(CompressError::Corrupt(format!("{n} sections for legacy codec {id}")));
        }
        let lens: Vec<usize> = (0..n).map(|_| take(8, "section table").map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)).collect::<Result<_, _>>()?;
        let sections: Vec<&[u8]> = lens.iter().map(|&l| take(l, "section")).collect::<Result<_, _>>()?;
        // The legacy format has no header checksum, so cap capacities by what zstd could
        // plausibly expand the section to rather than trusting raw_len blindly.
        let cap = |s: &[u8]| (raw_len as usize).min(s.len().saturating_mul(32 * 1024));
        let unz = |s: &[u8], c: usize| zstd::bulk::decompress(s, c).map_err(|e| CompressError::Corrupt(e.to_string()));
        let raw = if id == 1 {
            unz(sections[0], cap(sections[0]))?
        } else {
            let prefix = unz(sections[0], cap(sections[0]))?;
            let planes: Vec<Vec<u8>> = sections[1..5].iter().map(|p| unz(p, cap(p) / 4 + 1)).collect::<Result<_, _>>()?;
            let words = planes[0].len();
            if planes.iter().any(|p| p.len() != words) {
                return Err(CompressError::Corrupt("byte planes differ in length".into()));
            }
            let tail = unz(sections[5], 3)?;
            let mut raw = Vec::with_capacity(prefix.len() + 4 * words + tail.len());
            raw.extend_from_slice(&prefix);
            for i in 0..words {
                raw.extend(planes.iter().map(|p| p[i]));
            }
            raw.extend_from_slice(&tail);
            raw
        };
        let found = blake3::hash(&raw);
        if raw.len() as u64 != raw_len || found != expected {
            return Err(CompressError::HashMismatch { expected: expected.to_hex().to_string(), found: found.to_hex().to_string() });
        }
        Ok(raw)
    }
}

/// Deterministic test/bench inputs shared by the unit tests and `bench`.
pub mod synth {
    /// SplitMix64: tiny, seedable, good enough for test weights.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^ (z >> 31)
        }

        pub fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Box-Muller standard normal.
        pub fn normal(&mut self) -> f64 {
            let u = self.uniform().max(1e-300);
            let v = self.uniform();
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    /// A safetensors file from (name, dtype, shape, raw bytes) with optional metadata, written
    /// by hand so tests can also produce unusual layouts (odd header lengths).
    pub fn safetensors(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)], metadata: Option<&str>) -> Vec<u8> {
        let mut header = String::from("{");
        if let Some(m) = metadata {
            header.push_str(&format!("\"__metadata__\":{m},"));
        }
        let mut off = 0;
        for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
            let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            header.push_str(&format!("{}\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}", if i > 0 { "," } else { "" }, shape.join(","), off + bytes.len()));
            off += bytes.len();
        }
        header.push('}');
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        for (_, _, _, b) in tensors {
            out.extend_from_slice(b);
        }
        out
    }

    pub fn gaussian_f32(n: usize, std: f64, seed: u64) -> Vec<f32> {
        let mut r = Rng(seed);
        (0..n).map(|_| (r.normal() * std) as f32).collect()
    }

    pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::synth::*;
    use super::*;

    fn mixed_checkpoint(seed: u64, perturb: f64) -> Vec<u8> {
        let w = gaussian_f32(3000, 0.02, 1);
        let mut r = Rng(seed);
        let w: Vec<f32> = w.iter().map(|x| x + (r.normal() * perturb) as f32).collect();
        let bf: Vec<u8> = w.iter().take(1000).flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let f16: Vec<u8> = w.iter().take(500).flat_map(|x| ((x.to_bits() >> 16) as u16 ^ 0x1234).to_le_bytes()).collect();
        let ids: Vec<u8> = (0..300i64).flat_map(|i| (i * 7).to_le_bytes()).collect();
        safetensors(
            &[
                ("a.weight", "F32", vec![30, 100], f32_bytes(&w)),
                ("b.bf", "BF16", vec![1000], bf),
                ("c.ids", "I64", vec![300], ids),
                ("d.half", "F16", vec![500], f16),
                ("e.odd", "U8", vec![3], vec![1, 2, 3]),
            ],
            Some(r#"{"format":"pt","note":"x"}"#),
        )
    }

    fn small_opts() -> Options {
        // 1 KiB chunks so small test files exercise many chunks, boundaries and the hash tree.
        Options { threads: 2, chunk_log2: 10, progress: None }
    }

    #[test]
    fn parallel_hash_matches_blake3() {
        let mut r = Rng(3);
        for len in [0usize, 1, 1023, 1024, 1025, 2048, 3000, 4096, 5000, 70_000] {
            let raw: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
            assert_eq!(hash_chunks(&raw, 10, 2), blake3::hash(&raw), "len {len}");
        }
    }

    #[test]
    fn codecs_round_trip_mixed_and_unusual_inputs() {
        let st = mixed_checkpoint(2, 0.0);
        let inputs: Vec<Vec<u8>> = vec![st.clone(), st[..st.len() - 5].to_vec(), b"not safetensors at all, odd length".to_vec(), Vec::new(), vec![7u8], {
            // A header claiming offsets past the end of the file.
            let mut bad = st.clone();
            bad.truncate(st.len() / 2);
            bad
        }];
        for raw in &inputs {
            for codec in [Codec::Zstd, Codec::EvolveFp] {
                for opts in [Options::default(), small_opts()] {
                    let enc = encode_with(raw, None, codec, opts).unwrap();
                    assert_eq!(&decode_with(&enc, None, opts).unwrap(), raw);
                    assert_eq!(&decode(&enc).unwrap(), raw, "decode does not depend on options");
                }
            }
        }
        let rt = round_trip(&st, Codec::EvolveFp).unwrap();
        assert_eq!(rt.verified_hash, blake3::hash(&st).to_hex().to_string());
    }

    #[test]
    fn evolve_fp_beats_zstd_on_gaussian_weights() {
        let w = f32_bytes(&gaussian_f32(200_000, 0.02, 9));
        let st = safetensors(&[("w", "F32", vec![200_000], w)], None);
        let fp = encode(&st, Codec::EvolveFp).len() as f64;
        let z = encode(&st, Codec::Zstd).len() as f64;
        let ratio = st.len() as f64 / fp;
        assert!(ratio > 1.18, "f32 gaussian ratio {ratio}");
        assert!(fp < z * 0.95, "evolve-fp {fp} vs zstd {z}");
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_an_error() {
        let st = mixed_checkpoint(2, 0.0);
        for codec in [Codec::EvolveFp, Codec::Zstd] {
            let enc = encode_with(&st, None, codec, small_opts()).unwrap();
            let one = Options { threads: 1, ..small_opts() };
            for at in 0..enc.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = enc.clone();
                    bad[at] ^= bit;
                    assert!(decode_with(&bad, None, one).is_err(), "{}: flip {bit:#x} at {at} of {} went unnoticed", codec.name(), enc.len());
                }
            }
            for len in 0..enc.len() {
                assert!(decode_with(&enc[..len], None, one).is_err(), "truncation to {len} went unnoticed");
            }
            let mut longer = enc.clone();
            longer.push(0);
            assert!(decode(&longer).is_err());
        }
        assert!(matches!(decode(b"garbage"), Err(CompressError::BadMagic)));
    }

    #[test]
    fn delta_round_trips_and_rejects_the_wrong_parent() {
        let parent = mixed_checkpoint(2, 0.0);
        let child = mixed_checkpoint(3, 1e-5);
        assert_ne!(parent, child);
        for codec in [Codec::EvolveFp, Codec::Zstd] {
            let d = encode_with(&child, Some(&parent), codec, small_opts()).unwrap();
            assert_eq!(decode_delta(&d, &parent).unwrap(), child);
            assert!(matches!(decode(&d), Err(CompressError::NeedsParent(_))));
            assert!(matches!(decode_delta(&d, &child), Err(CompressError::WrongParent { .. })));
            let standalone = encode(&child, codec);
            assert!(matches!(decode_delta(&standalone, &parent), Err(CompressError::NotDelta)));
            if codec == Codec::EvolveFp {
                assert!(d.len() < standalone.len(), "delta {} vs standalone {}", d.len(), standalone.len());
            }
            // Flips in a delta are caught too.
            for at in (0..d.len()).step_by(7) {
                let mut bad = d.clone();
                bad[at] ^= 0x04;
                assert!(decode_delta(&bad, &parent).is_err(), "flip at {at}");
            }
        }
        // A parent differing only in bytes no segment reads is still the wrong parent.
        let mut padded = parent.clone();
        padded.push(0);
        let d = encode_delta(&child, &parent, Codec::EvolveFp);
        assert!(matches!(decode_delta(&d, &padded), Err(CompressError::WrongParent { .. })));
        // A parent with a different layout: nothing aligns, still exact.
        let other = safetensors(&[("zz", "F32", vec![2], vec![0; 8])], None);
        let d = encode_delta(&child, &other, Codec::EvolveFp);
        assert_eq!(decode_delta(&d, &other).unwrap(), child);
    }

    #[test]
    fn v2_containers_still_decode_and_reject_corruption() {
        let st = mixed_checkpoint(2, 0.0);
        let big = safetensors(&[("w", "F32", vec![50_000], f32_bytes(&gaussian_f32(50_000, 0.02, 4)))], None);
        for raw in [&st, &big] {
            let v2 = encode_version(raw, None, Codec::EvolveFp, small_opts(), false).unwrap();
            assert!(v2.starts_with(MAGIC_V2));
            assert_eq!(&decode(&v2).unwrap(), raw);
            let v3 = encode_with(raw, None, Codec::EvolveFp, small_opts()).unwrap();
            assert!(v3.starts_with(MAGIC_V3));
            // The magic is not interchangeable: the streams differ.
            let mut relabelled = v2.clone();
            relabelled[..8].copy_from_slice(MAGIC_V3);
            assert!(decode(&relabelled).is_err());
        }
        let v2 = encode_version(&st, None, Codec::EvolveFp, small_opts(), false).unwrap();
        let one = Options { threads: 1, ..small_opts() };
        for at in 0..v2.len() {
            let mut bad = v2.clone();
            bad[at] ^= 0x01;
            assert!(decode_with(&bad, None, one).is_err(), "v2 flip at {at}");
        }
        let parent = mixed_checkpoint(2, 0.0);
        let child = mixed_checkpoint(3, 1e-5);
        let d = encode_version(&child, Some(&parent), Codec::EvolveFp, small_opts(), false).unwrap();
        assert_eq!(decode_delta(&d, &parent).unwrap(), child);
    }

    #[test]
    fn legacy_containers_still_decode() {
        // An EVOLVEZ1 zstd container, as the previous version wrote it.
        let raw = mixed_checkpoint(2, 0.0);
        let z = zstd::bulk::compress(&raw, 3).unwrap();
        let mut old = MAGIC_V1.to_vec();
        old.push(1);
        old.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        old.extend_from_slice(blake3::hash(&raw).as_bytes());
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(&(z.len() as u64).to_le_bytes());
        old.extend_from_slice(&z);
        assert_eq!(decode(&old).unwrap(), raw);
        let n = old.len();
        old[n - 3] ^= 1;
        assert!(decode(&old).is_err());
    }
}

#[cfg(test)]
mod phases {
    /// Where single-threaded decode time goes, per phase:
    /// `cargo test --release -p evolve-compress decode_phases -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn decode_phases() {
        use super::*;
        for bf in [false, true] {
            let mut raw = bench::synthetic_gaussian(4_000_000, 42);
            if bf {
                raw = bench::to_bf16(&raw).unwrap();
            }
            let enc = encode(&raw, Codec::EvolveFp);
            let (h, start) = Header::parse(&enc).unwrap();
            let c = 1usize << h.chunk_log2;
            let mut offs = Vec::new();
            let mut at = start;
            for &l in &h.chunk_lens {
                offs.push((at, at + l as usize));
                at += l as usize;
            }
            let mut best = [f64::MAX; 4];
            for _ in 0..10 {
                let t = Instant::now();
                let mut out = vec![0u8; raw.len()];
                out[0] = 1;
                let t_alloc = t.elapsed().as_secs_f64();
                let (mut a, mut b, mut d) = (0.0, 0.0, 0.0);
                for (i, dst) in out.chunks_mut(c).enumerate() {
                    let (x, y) = offs[i];
                    let t = Instant::now();
                    std::hint::black_box(check8(&enc[x..y]));
                    a += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    chunk::decode_chunk(&enc[x..y], None, dst, h.codec.plan(h.v3)).unwrap();
                    b += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    std::hint::black_box(cv_of(dst, i, c));
                    d += t.elapsed().as_secs_f64();
                }
                for (m, v) in best.iter_mut().zip([t_alloc, a, b, d]) {
                    *m = m.min(v);
                }
            }
            let ns = |s: f64| s * 1e9 / raw.len() as f64;
            println!("{}: ns/byte alloc {:.3} check8 {:.3} decode_chunk {:.3} cv {:.3}", if bf { "bf16" } else { "f32" }, ns(best[0]), ns(best[1]), ns(best[2]), ns(best[3]));
        }
    }
}
