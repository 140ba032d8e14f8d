//! [`QueueDevice`] under smoltcp's transmit calls, with the driver's end of a real ring in this
//! process: smoltcp fragments IPv4 itself but hands the device IPv6 frames larger than the
//! MTU, which go into the ring as IPv6 fragments, in one batch.

#![cfg(feature = "smoltcp")]

use netmux_client::device::QueueDevice;
use netmux_ring::{ClientQueue, DriverQueue, FrameBatch, QueueConfig, TxStatus};
use smoltcp::phy::{Device, TxToken};
use smoltcp::time::Instant;

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

/// An Ethernet frame with an IPv6 UDP datagram of `payload` bytes.
fn udp6(payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 8 + payload];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[18..20].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    f[20] = 17;
    f[21] = 64;
    f[22..24].copy_from_slice(&[0x20, 0x01]);
    f[37] = 1;
    f[38..40].copy_from_slice(&[0x20, 0x01]);
    f[53] = 2;
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    f
}

/// Has smoltcp's part: one transmit token, consumed with `frame`.
fn transmit(device: &mut QueueDevice, frame: &[u8]) {
    let token = device.transmit(Instant::from_millis(0)).expect("room");
    token.consume(frame.len(), |buf| buf.copy_from_slice(frame));
}

fn taken(driver: &mut DriverQueue) -> Vec<Vec<u8>> {
    let mut batch = FrameBatch::new();
    driver.take_tx(&mut batch, 128).unwrap();
    let frames: Vec<Vec<u8>> = batch.iter_tagged().map(|(_, f)| f.to_vec()).collect();
    for (tag, frame) in batch.iter_tagged() {
        driver
            .complete(tag, TxStatus::Sent, frame.len() as u32)
            .unwrap();
    }
    driver.flush();
    frames
}

#[test]
fn an_ipv6_frame_larger_than_the_mtu_goes_into_the_ring_as_its_fragments() {
    let (mut driver, client) = pair();
    let mut device = QueueDevice::new(client, 1500);
    let whole = udp6(8000);
    transmit(&mut device, &whole);
    let frames = taken(&mut driver);
    assert_eq!(frames.len(), 6);
    let mut data = Vec::new();
    let mut idents = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        assert!(f.len() <= 1514, "fits the link");
        assert_eq!(f[20], 44, "a Fragment header follows the fixed header");
        assert_eq!(f[54], 17, "then UDP");
        let word = u16::from_be_bytes([f[56], f[57]]);
        assert_eq!(usize::from(word & !7), data.len());
        assert_eq!(word & 1 == 1, i + 1 < frames.len());
        idents.push(f[58..62].to_vec());
        data.extend_from_slice(&f[62..]);
    }
    assert_eq!(data, whole[54..], "the fragments carry the datagram whole");
    assert!(
        idents.windows(2).all(|w| w[0] == w[1]),
        "one identification"
    );
    let counters = device.counters();
    assert_eq!(counters.tx_frames, 6);
    assert_eq!(counters.tx_ipv6_fragmented, 1);
    // The next datagram has another identification; a frame that fits goes as it is.
    transmit(&mut device, &whole);
    let again = taken(&mut driver);
    assert_ne!(again[0][58..62], idents[0][..]);
    let small = udp6(100);
    transmit(&mut device, &small);
    assert_eq!(taken(&mut driver), vec![small]);
}
