//! [`AsyncQueue`] on a tokio runtime: a send that does not fit waits (without holding a
//! thread) until the driver makes room and is then written whole, in order; a receive waits
//! until a frame arrives. The driver's end is a real ring in this process, drained by a thread.

#![cfg(feature = "tokio")]

use std::time::Duration;

use netmux_client::nonblocking::AsyncQueue;
use netmux_ring::{ClientQueue, DriverQueue, FrameBatch, QueueConfig, QueueError, TxStatus};

fn pair() -> (DriverQueue, ClientQueue) {
    let driver = DriverQueue::create(&QueueConfig {
        slot_size: 2048,
        rx_slots: 64,
        tx_slots: 64,
        completion_slots: 128,
    })
    .unwrap();
    let fds = driver.client_fds().unwrap();
    let client = ClientQueue::from_fds(fds.memfd, fds.doorbell).unwrap();
    (driver, client)
}

fn numbered(i: u32) -> Vec<u8> {
    let mut frame = vec![0u8; 1000];
    frame[..4].copy_from_slice(&i.to_be_bytes());
    frame
}

#[tokio::test(flavor = "current_thread")]
async fn sends_wait_for_room_and_receives_for_frames_without_losing_or_reordering() {
    const FRAMES: u32 = 500;
    let (mut driver, client) = pair();
    let mut queue = AsyncQueue::new(client).unwrap();
    // The driver takes a few frames at a time, slowly, then delivers one frame back.
    let drainer = std::thread::spawn(move || {
        let mut taken = Vec::new();
        let mut batch = FrameBatch::new();
        while taken.len() < FRAMES as usize {
            std::thread::sleep(Duration::from_millis(1));
            batch.clear();
            driver.take_tx(&mut batch, 7).unwrap();
            for (tag, frame) in batch.iter_tagged() {
                driver
                    .complete(tag, TxStatus::Sent, frame.len() as u32)
                    .unwrap();
                taken.push(frame.to_vec());
            }
            driver.flush();
        }
        std::thread::sleep(Duration::from_millis(50));
        driver.deliver(&[&[b"late frame"]]);
        (taken, driver)
    });
    // Batches of 10 frames: the ring holds 64, so most batches wait for room.
    let frames: Vec<Vec<u8>> = (0..FRAMES).map(numbered).collect();
    let mut done = Vec::new();
    for chunk in frames.chunks(10) {
        // The driver takes a frame only when its completion has room: collect them.
        queue.get_mut().completions(usize::MAX, &mut done).unwrap();
        let refs: Vec<[&[u8]; 1]> = chunk.iter().map(|f| [f.as_slice()]).collect();
        let batch: Vec<&[&[u8]]> = refs.iter().map(|r| &r[..]).collect();
        let outcome = tokio::time::timeout(Duration::from_secs(20), queue.send(&batch))
            .await
            .expect("room opens")
            .unwrap();
        assert_eq!(outcome.sent, chunk.len());
    }
    // A batch beyond the ring is refused at once, not waited for.
    let big = numbered(0);
    let big: [&[u8]; 1] = [&big];
    let too_many: Vec<&[&[u8]]> = vec![&big[..]; 65];
    assert!(matches!(
        queue.send(&too_many).await,
        Err(QueueError::BatchTooLarge { .. })
    ));
    let mut received = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(20), queue.recv_owned(8, &mut received))
        .await
        .expect("the late frame arrives")
        .unwrap();
    assert_eq!((n, received[0].as_slice()), (1, &b"late frame"[..]));
    let (taken, _driver) = drainer.join().unwrap();
    assert_eq!(taken, frames, "every frame once, in order");
    while done.len() < FRAMES as usize {
        tokio::time::timeout(
            Duration::from_secs(5),
            queue.completions(usize::MAX, &mut done),
        )
        .await
        .expect("the last completions arrive")
        .unwrap();
    }
    assert!(done.iter().all(|c| c.status == TxStatus::Sent));
    assert!(done.iter().enumerate().all(|(i, c)| c.seq == i as u64));
}
