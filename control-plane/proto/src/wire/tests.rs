use proptest::prelude::*;

use super::*;
use crate::ProviderState;
use crate::policy::tests::demo;

/// A fleet derived from the demo one: providers, groups and tenants kept, dropped,
/// changed or added according to `picks`.
fn variant(picks: &[u8]) -> Fleet {
    let mut f = demo();
    let pick = |i: usize| picks.get(i).copied().unwrap_or(0);
    let mut i = 0;
    f.providers.retain(|_| {
        i += 1;
        pick(i) % 4 != 0
    });
    for (i, p) in f.providers.iter_mut().enumerate() {
        match pick(i + 10) % 3 {
            0 => p.state = ProviderState::Draining,
            1 => p.weight = 1 + u32::from(pick(i + 20)),
            _ => {}
        }
    }
    for n in 0..pick(30) % 3 {
        let mut extra = demo().providers[0].clone();
        extra.id = ProviderId(format!("extra-{n}"));
        f.providers.push(extra);
    }
    if pick(31) % 2 == 0 {
        f.groups.clear();
        f.policy.rules.retain(|r| !format!("{r:?}").contains("group:"));
    }
    if pick(32) % 2 == 0 {
        f.policy.rules.reverse();
    }
    f.tenants.truncate(usize::from(pick(33)) % (f.tenants.len() + 1));
    f
}

proptest! {
    /// A delta, when one is produced, turns the old fleet into exactly the new one,
    /// and it survives the wire.
    #[test]
    fn a_delta_reproduces_the_new_fleet(a in prop::collection::vec(any::<u8>(), 34), b in prop::collection::vec(any::<u8>(), 34)) {
        let (old, new) = (variant(&a), variant(&b));
        if let Some(delta) = FleetDelta::between(&old, &new) {
            let frame = encode(&CpMessage::Delta { epoch: 1, version: 2, base: 1, delta: delta.clone() });
            let back: CpMessage = decode(&frame[4..]).unwrap();
            let CpMessage::Delta { delta: d, .. } = back else { panic!("not a delta") };
            prop_assert_eq!(d.apply(&old), new.clone());
            prop_assert_eq!(d.is_empty(), old == new);
        }
    }
}

#[test]
fn deltas_are_produced_for_edits_and_refused_for_reordering() {
    let old = demo();
    let mut new = old.clone();
    new.providers[2].state = ProviderState::Draining;
    let d = FleetDelta::between(&old, &new).unwrap();
    assert_eq!(d.upsert_providers.len(), 1);
    assert!(d.policy.is_none() && d.remove_providers.is_empty());
    assert_eq!(d.apply(&old), new);

    let mut reordered = old.clone();
    reordered.providers.swap(0, 1);
    assert!(FleetDelta::between(&old, &reordered).is_none());
}

#[test]
fn frames_round_trip_and_oversized_frames_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let msg = EdgeMessage::Nack {
            version: 7,
            reason: "bad".into(),
        };
        let frame = encode(&msg);
        let mut stream: &[u8] = &frame;
        let payload = read_frame(&mut stream).await.unwrap().unwrap();
        assert_eq!(decode::<EdgeMessage>(&payload).unwrap(), msg);
        assert!(read_frame(&mut stream).await.unwrap().is_none());

        let mut huge: &[u8] = &((MAX_FRAME as u32) + 1).to_be_bytes();
        assert!(matches!(read_frame(&mut huge).await, Err(FrameError::TooLarge(_))));
        let mut cut: &[u8] = &frame[..frame.len() - 1];
        assert!(matches!(read_frame(&mut cut).await, Err(FrameError::Io(_))));
    });
}

/// The wire-1 messages exactly as a wire-1 edge writes and reads them. If a change
/// here breaks decoding, older edges break: bump the wire version and keep serving
/// the old shape instead.
#[test]
fn wire_one_messages_keep_their_shape() {
    let hello = r#"{"type":"hello","wire":1,"edge_id":"edge-a.test","running":{"epoch":9,"version":3}}"#;
    assert_eq!(
        decode::<EdgeMessage>(hello.as_bytes()).unwrap(),
        EdgeMessage::Hello(Hello {
            wire: 1,
            edge_id: "edge-a.test".into(),
            running: Some(Running { epoch: 9, version: 3 }),
        })
    );
    let ack = r#"{"type":"ack","version":4}"#;
    assert_eq!(
        decode::<EdgeMessage>(ack.as_bytes()).unwrap(),
        EdgeMessage::Ack { version: 4 }
    );
    let nack = r#"{"type":"nack","version":4,"reason":"no"}"#;
    assert!(matches!(
        decode::<EdgeMessage>(nack.as_bytes()).unwrap(),
        EdgeMessage::Nack { version: 4, .. }
    ));

    let welcome = String::from_utf8(encode(&CpMessage::Welcome { wire: 1, epoch: 9 })[4..].to_vec()).unwrap();
    assert_eq!(welcome, r#"{"type":"welcome","wire":1,"epoch":9}"#);
    let snap = encode(&CpMessage::Snapshot {
        epoch: 9,
        version: 4,
        fleet: demo(),
    });
    let v: serde_json::Value = serde_json::from_slice(&snap[4..]).unwrap();
    assert_eq!(v["type"], "snapshot");
    assert_eq!(v["version"], 4);
    let fleet: Fleet = serde_json::from_value(v["fleet"].clone()).unwrap();
    assert_eq!(fleet, demo());
    // A field a newer peer adds is ignored, not an error.
    let newer = r#"{"type":"ack","version":4,"applied_in_ms":3}"#;
    assert_eq!(
        decode::<EdgeMessage>(newer.as_bytes()).unwrap(),
        EdgeMessage::Ack { version: 4 }
    );
}

#[test]
fn negotiation_serves_the_window_and_refuses_older() {
    assert_eq!(negotiate(1, 1, 2), Some(1));
    assert_eq!(negotiate(2, 1, 2), Some(2));
    assert_eq!(negotiate(3, 1, 2), Some(2));
    assert_eq!(negotiate(0, 1, 2), None);
    assert_eq!(CpMessage::FleetHealth { down: vec![] }.since(), 2);
}
