//! A batch of frames in driver-private memory, reused from call to call.
//!
//! Link backends receive into one, and the driver copies tx frames out of a client's ring into
//! one before looking at them. Clearing a batch keeps its buffers, so a steady stream of
//! batches allocates nothing after the first few.

/// Frames in private buffers, each with a 64-bit tag (the tx sequence number for frames taken
/// from a tx ring; zero where the producer has nothing to say).
#[derive(Debug, Default)]
pub struct FrameBatch {
    buffers: Vec<Vec<u8>>,
    tags: Vec<u64>,
    len: usize,
}

impl FrameBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of frames in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no frames.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every frame, keeping the buffers for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends a frame built by `fill`, which receives an empty buffer (with capacity left from
    /// earlier use). Returns what `fill` returned; if it returns `Err`, the frame is discarded.
    pub fn push_with<T, E>(
        &mut self,
        tag: u64,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<T, E>,
    ) -> Result<T, E> {
        if self.len == self.buffers.len() {
            self.buffers.push(Vec::new());
            self.tags.push(0);
        }
        let buffer = &mut self.buffers[self.len];
        buffer.clear();
        let result = fill(buffer)?;
        self.tags[self.len] = tag;
        self.len += 1;
        Ok(result)
    }

    /// Appends a copy of `frame`.
    pub fn push(&mut self, tag: u64, frame: &[u8]) {
        let _ = self.push_with(tag, |buffer| {
            buffer.extend_from_slice(frame);
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// The frame at `index`.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        (index < self.len).then(|| self.buffers[index].as_slice())
    }

    /// The frame at `index`, writable (the driver's private copy).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Vec<u8>> {
        (index < self.len).then(|| &mut self.buffers[index])
    }

    /// The tag of the frame at `index`.
    pub fn tag(&self, index: usize) -> Option<u64> {
        (index < self.len).then(|| self.tags[index])
    }

    /// The frames in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.buffers[..self.len].iter().map(Vec::as_slice)
    }

    /// The frames with their tags, in order.
    pub fn iter_tagged(&self) -> impl ExactSizeIterator<Item = (u64, &[u8])> + '_ {
        self.tags[..self.len]
            .iter()
            .copied()
            .zip(self.buffers[..self.len].iter().map(Vec::as_slice))
    }
}
