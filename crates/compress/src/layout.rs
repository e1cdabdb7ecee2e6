//! Where the floats are: a safetensors header read just far enough to know which byte ranges
//! hold F32/BF16/F16 elements, and which tensors of a parent checkpoint line up with a child's.
//!
//! The layout is only a hint for the coder. Every byte of the file is covered by exactly one run
//! whatever the header says, so a lying or unusual header costs ratio, never correctness.

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bytes with no float structure we exploit: header JSON, integer tensors, gaps.
    Other,
    F32,
    Bf16,
    F16,
}

impl Kind {
    pub fn elem(self) -> usize {
        match self {
            Kind::Other => 1,
            Kind::F32 => 4,
            Kind::Bf16 | Kind::F16 => 2,
        }
    }

    pub fn id(self) -> u8 {
        match self {
            Kind::Other => 0,
            Kind::F32 => 1,
            Kind::Bf16 => 2,
            Kind::F16 => 3,
        }
    }

    pub fn from_id(id: u8) -> Option<Kind> {
        Some(match id {
            0 => Kind::Other,
            1 => Kind::F32,
            2 => Kind::Bf16,
            3 => Kind::F16,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Absolute byte range in the file (header included).
    pub start: usize,
    pub end: usize,
}

/// Parsed safetensors structure: header end and the tensors whose ranges are valid and disjoint,
/// sorted by start. `None` for bytes that are not safetensors.
pub fn parse(raw: &[u8]) -> Option<(usize, Vec<TensorInfo>)> {
    let n = u64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
    let header_end = usize::try_from(n).ok()?.checked_add(8).filter(|&e| e <= raw.len())?;
    let json: Value = serde_json::from_slice(&raw[8..header_end]).ok()?;
    let mut tensors = Vec::new();
    for (name, v) in json.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let (Some(dtype), Some(offs)) = (v.get("dtype").and_then(Value::as_str), v.get("data_offsets").and_then(Value::as_array)) else { continue };
        let [a, b] = offs.as_slice() else { continue };
        let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) else { continue };
        let shape = v.get("shape").and_then(Value::as_array).map(|s| s.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
        let start = (a as usize).checked_add(header_end);
        let end = (b as usize).checked_add(header_end);
        if let (Some(start), Some(end)) = (start, end)
            && start <= end
            && end <= raw.len()
        {
            tensors.push(TensorInfo { name: name.clone(), dtype: dtype.to_string(), shape, start, end });
        }
    }
    tensors.sort_by_key(|t| (t.start, t.end));
    let mut last_end = header_end;
    tensors.retain(|t| {
        let keep = t.start >= last_end;
        if keep {
            last_end = t.end;
        }
        keep
    });
    Some((header_end, tensors))
}

/// A contiguous byte range coded one way; `parent` is the start of the aligned range in the
/// parent file when the run is XOR-coded against it.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
    pub parent: Option<usize>,
}

fn kind_of(dtype: &str) -> Kind {
    match dtype {
        "F32" => Kind::F32,
        "BF16" => Kind::Bf16,
        "F16" => Kind::F16,
        _ => Kind::Other,
    }
}

/// Runs covering `0..raw.len()` exactly, in order. With a parent, tensors with the same name,
/// dtype and shape (and a same-length header) are XOR-coded against it.
pub fn runs(raw: &[u8], parent: Option<&[u8]>, split_floats: bool) -> Vec<Run> {
    let mut out = Vec::new();
    let Some((header_end, tensors)) = parse(raw) else {
        // Not safetensors: one opaque run, XORed only against a parent of identical length
        // (anything else would misalign every byte).
        let parent = parent.filter(|p| p.len() == raw.len()).map(|_| 0);
        if !raw.is_empty() {
            out.push(Run { start: 0, end: raw.len(), kind: Kind::Other, parent });
        }
        return out;
    };
    let parent_layout = parent.and_then(|p| parse(p).map(|l| (p, l)));
    let header_parent = parent_layout.as_ref().filter(|(_, (pe, _))| *pe == header_end).map(|_| 0);
    out.push(Run { start: 0, end: header_end, kind: Kind::Other, parent: header_parent });
    let mut at = header_end;
    for t in &tensors {
        if t.start > at {
            out.push(Run { start: at, end: t.start, kind: Kind::Other, parent: None });
        }
        let kind = if split_floats { kind_of(&t.dtype) } else { Kind::Other };
        let parent = parent_layout.as_ref().and_then(|(_, (_, pts))| {
            pts.iter().find(|p| p.name == t.name && p.dtype == t.dtype && p.shape == t.shape && p.end - p.start == t.end - t.start).map(|p| p.start)
        });
        if t.end > t.start {
            out.push(Run { start: t.start, end: t.end, kind, parent });
        }
        at = t.end;
    }
    if raw.len() > at {
        out.push(Run { start: at, end: raw.len(), kind: Kind::Other, parent: None });
    }
    out
}
