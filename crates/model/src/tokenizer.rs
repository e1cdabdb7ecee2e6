//! Byte-level tokenizer: byte value `b` is token `b`; special tokens take ids from 256 up, so any
//! text round-trips and no vocabulary file is needed.

pub const BOS: u32 = 256;
pub const EOS: u32 = 257;
pub const PAD: u32 = 258;
/// Emitted instead of an answer when a request must be refused.
pub const REFUSE: u32 = 259;
pub const VOCAB_SIZE: usize = 260;

#[derive(Clone, Copy, Debug, Default)]
pub struct Tokenizer;

impl Tokenizer {
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    /// `BOS prompt` — the prefix the model continues.
    pub fn encode_prompt(&self, prompt: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(prompt.len() + 1);
        ids.push(BOS);
        ids.extend(self.encode(prompt));
        ids
    }

    /// Decodes generated ids up to the first stop token; special ids other than stops are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .take_while(|&&id| id != EOS && id != REFUSE)
            .filter(|&&id| id < 256)
            .map(|&id| id as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn is_stop(&self, id: u32) -> bool {
        id == EOS || id == REFUSE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_stop_at_eos() {
        let t = Tokenizer;
        let ids = t.encode("12+34=");
        assert_eq!(ids, vec![49, 50, 43, 51, 52, 61]);
        let mut generated = t.encode("46");
        generated.push(EOS);
        generated.extend(t.encode("junk"));
        assert_eq!(t.decode(&generated), "46");
        assert_eq!(t.encode_prompt("a")[0], BOS);
    }
}
