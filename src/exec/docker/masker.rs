//! Streaming replacement of secret values in container output.

/// What masked secrets are replaced with in the log.
const MASK: &[u8] = b"***";

/// Streaming replacement of secret values by `***`: a secret split across
/// chunks is still masked, because a tail that could begin a secret is held
/// back until the next chunk decides it.
#[derive(Debug, Clone)]
pub struct Masker {
    /// Longest first, so a secret containing another is masked whole.
    secrets: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl Masker {
    pub fn new(masks: &[String]) -> Masker {
        let mut secrets: Vec<Vec<u8>> = masks
            .iter()
            .filter(|mask| !mask.is_empty())
            .map(|mask| mask.as_bytes().to_vec())
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Masker {
            secrets,
            pending: Vec::new(),
        }
    }

    /// Masks what can be decided of `pending + bytes`; returns it.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return bytes.to_vec();
        }
        self.pending.extend_from_slice(bytes);
        let buffer = std::mem::take(&mut self.pending);
        let (out, held) = self.mask(&buffer, false);
        self.pending = buffer[held..].to_vec();
        out
    }

    /// Masks and returns everything held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let buffer = std::mem::take(&mut self.pending);
        self.mask(&buffer, true).0
    }

    /// Returns the masked output and the offset from which input is held back.
    fn mask(&self, buffer: &[u8], end: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buffer.len());
        let mut at = 0;
        while at < buffer.len() {
            let rest = &buffer[at..];
            // Undecided while a secret could still match with more input,
            // even when a shorter one matches already.
            let undecided = self
                .secrets
                .iter()
                .any(|secret| secret.len() > rest.len() && secret.starts_with(rest));
            if undecided && !end {
                return (out, at);
            }
            if let Some(secret) = self.secrets.iter().find(|secret| rest.starts_with(secret)) {
                out.extend_from_slice(MASK);
                at += secret.len();
                continue;
            }
            out.push(buffer[at]);
            at += 1;
        }
        (out, buffer.len())
    }
}
