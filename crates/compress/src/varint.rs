//! LEB128 varints for container fields whose size varies over orders of magnitude.

use crate::CompressError;

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn get_varint(bytes: &[u8], at: &mut usize) -> Result<u64, CompressError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or(CompressError::Truncated("varint"))?;
        *at += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(CompressError::Corrupt("varint longer than 64 bits".into()))
}
