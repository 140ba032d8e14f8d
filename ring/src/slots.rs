//! Reading and writing frames and completion entries in ring slots, shared by both ends.
//!
//! Writers gather a frame from vectors into consecutive slots. Readers walk the slot headers
//! exactly once each (a header may change under us, so it is never read twice), validate every
//! header against the layout, and copy payload out of the mapping; a bad header yields
//! [`FrameRead::Malformed`], never a panic or an access outside the ring.

use std::sync::atomic::{AtomicU32, Ordering};

use super::layout::{Layout, RingOffsets, COMPLETION_ENTRY_LEN, SLOT_HEADER_LEN, SLOT_MORE};
use super::protocol::RingWords;
use super::{Completion, TxStatus, MAX_FRAME_LEN};
use crate::sys::{OutOfBounds, SharedMapping};

/// The shared words of `ring`, checked to lie inside the mapping.
pub(crate) fn words<'m>(
    map: &'m SharedMapping,
    ring: &RingOffsets,
) -> Result<RingWords<'m, AtomicU32>, OutOfBounds> {
    Ok(RingWords {
        producer_index: map.u32_at(ring.producer_line)?,
        producer_wants_wake: map.u32_at(ring.producer_line + 4)?,
        consumer_index: map.u32_at(ring.consumer_line)?,
        consumer_wants_wake: map.u32_at(ring.consumer_line + 4)?,
    })
}

/// Writes a frame gathered from `vectors` (`len` bytes in total, at most [`MAX_FRAME_LEN`])
/// into the slots starting at index `start`; returns the number of slots used. The caller has
/// checked there is room and publishes the slots afterwards.
pub(crate) fn write_frame(
    map: &SharedMapping,
    layout: &Layout,
    ring: &RingOffsets,
    start: u32,
    vectors: &[&[u8]],
    len: usize,
) -> Result<u32, OutOfBounds> {
    let payload = layout.payload_per_slot();
    let slots = layout.slots_for(len);
    if let [single] = vectors {
        if slots == 1 {
            // Fast path: one vector, one slot.
            let slot = ring.slot(start);
            map.copy_in(slot + SLOT_HEADER_LEN, single)?;
            map.u32_at(slot)?.store(len as u32, Ordering::Relaxed);
            map.u32_at(slot + 4)?.store(0, Ordering::Relaxed);
            return Ok(1);
        }
    }
    let mut vec_index = 0;
    let mut vec_offset = 0;
    let mut remaining = len;
    for i in 0..slots {
        let slot = ring.slot(start.wrapping_add(i));
        let seg_len = remaining.min(payload);
        let mut written = 0;
        while written < seg_len {
            // `len` is the sum of the vector lengths, so a vector with bytes left exists.
            let Some(vector) = vectors.get(vec_index) else {
                break;
            };
            let take = (vector.len() - vec_offset).min(seg_len - written);
            map.copy_in(
                slot + SLOT_HEADER_LEN + written,
                &vector[vec_offset..vec_offset + take],
            )?;
            written += take;
            vec_offset += take;
            if vec_offset == vector.len() {
                vec_index += 1;
                vec_offset = 0;
            }
        }
        remaining -= seg_len;
        let flags = if i + 1 < slots { SLOT_MORE } else { 0 };
        map.u32_at(slot)?.store(seg_len as u32, Ordering::Relaxed);
        map.u32_at(slot + 4)?.store(flags, Ordering::Relaxed);
    }
    Ok(slots)
}

/// What reading one frame found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameRead {
    /// A well-formed frame of `len` bytes in `slots` slots.
    Frame {
        /// Slots it occupied.
        slots: u32,
        /// Its length.
        len: usize,
    },
    /// The slots from the start up to `slots` do not form a frame; consume them and move on.
    Malformed {
        /// Slots to consume (at least one).
        slots: u32,
    },
}

/// Reads the frame starting at index `start`, with `available` published slots, handing each
/// segment to `sink(offset_in_mapping, len)`. Every header is loaded once and validated: the
/// segment length must fit the slot, unknown flags are refused, the frame must end within the
/// available slots and within [`Layout::max_slots_per_frame`]. Callers only call it with
/// `available > 0`.
pub(crate) fn read_frame(
    map: &SharedMapping,
    layout: &Layout,
    ring: &RingOffsets,
    start: u32,
    available: u32,
    mut sink: impl FnMut(usize, usize) -> Result<(), OutOfBounds>,
) -> Result<FrameRead, OutOfBounds> {
    let payload = layout.payload_per_slot();
    let max_slots = layout.max_slots_per_frame().min(available);
    let mut len = 0usize;
    let mut i = 0u32;
    while i < max_slots {
        let slot = ring.slot(start.wrapping_add(i));
        let seg_len = map.u32_at(slot)?.load(Ordering::Relaxed) as usize;
        let flags = map.u32_at(slot + 4)?.load(Ordering::Relaxed);
        i += 1;
        if seg_len > payload || flags & !SLOT_MORE != 0 || len + seg_len > MAX_FRAME_LEN {
            return Ok(FrameRead::Malformed { slots: i });
        }
        sink(slot + SLOT_HEADER_LEN, seg_len)?;
        len += seg_len;
        if flags & SLOT_MORE == 0 {
            return Ok(FrameRead::Frame { slots: i, len });
        }
    }
    // Ran out of published slots (a partial frame) or past the most slots a frame may span.
    Ok(FrameRead::Malformed { slots: i.max(1) })
}

/// Writes one completion entry at index `index`.
pub(crate) fn write_completion(
    map: &SharedMapping,
    ring: &RingOffsets,
    index: u32,
    completion: &Completion,
) -> Result<(), OutOfBounds> {
    let entry = ring.slot(index);
    map.u64_at(entry)?.store(completion.seq, Ordering::Relaxed);
    map.u32_at(entry + 8)?
        .store(completion.status.code(), Ordering::Relaxed);
    map.u32_at(entry + 12)?
        .store(completion.len, Ordering::Relaxed);
    Ok(())
}

/// Reads the completion entry at index `index`.
pub(crate) fn read_completion(
    map: &SharedMapping,
    ring: &RingOffsets,
    index: u32,
) -> Result<Completion, OutOfBounds> {
    let entry = ring.slot(index);
    debug_assert_eq!(ring.slot_size, COMPLETION_ENTRY_LEN);
    Ok(Completion {
        seq: map.u64_at(entry)?.load(Ordering::Relaxed),
        status: TxStatus::from_code(map.u32_at(entry + 8)?.load(Ordering::Relaxed)),
        len: map.u32_at(entry + 12)?.load(Ordering::Relaxed),
    })
}
