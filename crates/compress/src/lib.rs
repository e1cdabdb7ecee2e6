//! Recompression of checkpoints: bit-exact codecs whose every decode is verified against the
//! blake3 hash of the original bytes, so a truncated or flipped file is an error, never a wrong
//! tensor.
//!
//! `byteplane-zstd` splits the f32 tensor region of a safetensors file into its four byte planes
//! before zstd: the high byte (sign and most of the exponent) of trained weights takes few
//! values and compresses well once it is not interleaved with near-random mantissa bytes.
//! `zstd` is the plain baseline.
//!
//! Architecture invariants: bytes in, bytes out; no knowledge of models or the ledger. The
//! container is self-describing (magic, codec, length, hash), so `decode` needs nothing else.

use std::time::Instant;

const MAGIC: &[u8; 8] = b"EVOLVEZ1";
const ZSTD_LEVEL: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    BytePlaneZstd,
}

impl Codec {
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::BytePlaneZstd => "byteplane-zstd",
        }
    }

    fn id(&self) -> u8 {
        match self {
            Codec::Zstd => 1,
            Codec::BytePlaneZstd => 2,
        }
    }

    fn from_id(id: u8) -> Option<Codec> {
        match id {
            1 => Some(Codec::Zstd),
            2 => Some(Codec::BytePlaneZstd),
            _ => None,
        }
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
    #[error("corrupt compressed section: {0}")]
    Corrupt(String),
    #[error("decoded bytes hash to {found}, expected {expected}: the compressed file is corrupt")]
    HashMismatch { expected: String, found: String },
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
}

/// Encodes, decodes again and verifies: what gets stored is known to restore bit-exactly.
pub fn round_trip(raw: &[u8], codec: Codec) -> Result<RoundTrip, CompressError> {
    let t = Instant::now();
    let encoded = encode(raw, codec);
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let decoded = decode(&encoded)?;
    let decode_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(RoundTrip { codec, raw_bytes: raw.len(), encoded, encode_ms, decode_ms, verified_hash: evolve_store::hash_bytes(&decoded) })
}

/// Length of the safetensors header (8-byte length + JSON), or 0 if `raw` is not safetensors.
fn safetensors_prefix(raw: &[u8]) -> usize {
    let Some(len) = raw.get(..8) else { return 0 };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
    match n.checked_add(8) {
        Some(end) if end <= raw.len() && raw.get(8) == Some(&b'{') => end,
        _ => 0,
    }
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, ZSTD_LEVEL).expect("zstd compresses in memory")
}

pub fn encode(raw: &[u8], codec: Codec) -> Vec<u8> {
    let sections: Vec<Vec<u8>> = match codec {
        Codec::Zstd => vec![zstd(raw)],
        Codec::BytePlaneZstd => {
            let prefix = safetensors_prefix(raw);
            let body = &raw[prefix..];
            let words = body.len() / 4;
            let mut planes: Vec<Vec<u8>> = (0..4).map(|_| Vec::with_capacity(words)).collect();
            for word in body[..words * 4].chunks_exact(4) {
                for (plane, byte) in planes.iter_mut().zip(word) {
                    plane.push(*byte);
                }
            }
            let mut sections = vec![zstd(&raw[..prefix])];
            sections.extend(planes.iter().map(|p| zstd(p)));
            sections.push(zstd(&body[words * 4..]));
            sections
        }
    };
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.push(codec.id());
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(raw).as_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for s in &sections {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    }
    for s in &sections {
        out.extend_from_slice(s);
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CompressError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(CompressError::Truncated(what))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, CompressError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
}

fn unzstd(bytes: &[u8], capacity: usize) -> Result<Vec<u8>, CompressError> {
    zstd::bulk::decompress(bytes, capacity).map_err(|e| CompressError::Corrupt(e.to_string()))
}

/// Decodes and verifies against the hash recorded at encode time.
pub fn decode(encoded: &[u8]) -> Result<Vec<u8>, CompressError> {
    let mut r = Reader { bytes: encoded, at: 0 };
    if r.take(8, "magic").map_err(|_| CompressError::BadMagic)? != MAGIC {
        return Err(CompressError::BadMagic);
    }
    let id = r.take(1, "codec")?[0];
    let codec = Codec::from_id(id).ok_or(CompressError::UnknownCodec(id))?;
    let raw_len = r.u64("length")? as usize;
    let expected = blake3::Hash::from_bytes(r.take(32, "hash")?.try_into().expect("32 bytes"));
    let n = u32::from_le_bytes(r.take(4, "section count")?.try_into().expect("4 bytes")) as usize;
    if n > 16 {
        return Err(CompressError::Corrupt(format!("{n} sections")));
    }
    let lens: Vec<usize> = (0..n).map(|_| r.u64("section table").map(|l| l as usize)).collect::<Result<_, _>>()?;
    let sections: Vec<&[u8]> = lens.iter().map(|&l| r.take(l, "section")).collect::<Result<_, _>>()?;
    let raw = match (codec, sections.as_slice()) {
        (Codec::Zstd, [s]) => unzstd(s, raw_len)?,
        (Codec::BytePlaneZstd, [prefix, p0, p1, p2, p3, tail]) => {
            let prefix = unzstd(prefix, raw_len)?;
            let planes = [p0, p1, p2, p3].map(|p| unzstd(p, raw_len / 4));
            let planes: Vec<Vec<u8>> = planes.into_iter().collect::<Result<_, _>>()?;
            let words = planes[0].len();
            if planes.iter().any(|p| p.len() != words) {
                return Err(CompressError::Corrupt("byte planes differ in length".into()));
            }
            let tail = unzstd(tail, 3)?;
            let mut raw = Vec::with_capacity(raw_len);
            raw.extend_from_slice(&prefix);
            for i in 0..words {
                raw.extend(planes.iter().map(|p| p[i]));
            }
            raw.extend_from_slice(&tail);
            raw
        }
        _ => return Err(CompressError::Corrupt(format!("{} sections for codec {}", n, codec.name()))),
    };
    let found = blake3::hash(&raw);
    if raw.len() != raw_len || found != expected {
        return Err(CompressError::HashMismatch { expected: expected.to_hex().to_string(), found: found.to_hex().to_string() });
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_safetensors() -> Vec<u8> {
        let header = br#"{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
        let mut raw = (header.len() as u64).to_le_bytes().to_vec();
        raw.extend_from_slice(header);
        let mut x = 1u32;
        for _ in 0..1000 {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            let v = ((x >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.1;
            raw.extend_from_slice(&v.to_le_bytes());
        }
        raw
    }

    #[test]
    fn both_codecs_round_trip_bit_exactly() {
        let raw = fake_safetensors();
        for codec in [Codec::Zstd, Codec::BytePlaneZstd] {
            let rt = round_trip(&raw, codec).unwrap();
            assert_eq!(decode(&rt.encoded).unwrap(), raw);
            assert_eq!(rt.verified_hash, evolve_store::hash_bytes(&raw));
        }
        let odd = b"not safetensors at all, odd length";
        assert_eq!(decode(&encode(odd, Codec::BytePlaneZstd)).unwrap(), odd);
    }

    #[test]
    fn byte_planes_beat_plain_zstd_on_weights() {
        let raw = fake_safetensors();
        assert!(encode(&raw, Codec::BytePlaneZstd).len() < encode(&raw, Codec::Zstd).len());
    }

    #[test]
    fn truncation_and_bit_flips_are_errors() {
        let raw = fake_safetensors();
        let enc = encode(&raw, Codec::BytePlaneZstd);
        assert!(decode(&enc[..enc.len() - 10]).is_err());
        for at in [9, 20, 60, enc.len() / 2, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at {at} went unnoticed");
        }
        assert!(matches!(decode(b"garbage"), Err(CompressError::BadMagic)));
    }
}
