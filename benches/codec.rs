//! Codec micro-benchmarks: decode and encode of PUBLISH (16 B, 1 KiB, 64 KiB payloads) and
//! CONNECT. `cargo bench --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardmq::codec::{
    decode, Connect, EncodedPublish, MqttStr, Packet, Properties, PropertyFields, ProtocolVersion,
    Publish, QoS,
};

fn publish(size: usize) -> Publish {
    Publish {
        qos: QoS::AtLeastOnce,
        packet_id: 42,
        topic: MqttStr::from("building/7/floor/3/room/12/temperature"),
        payload: Bytes::from(vec![0x5a; size]),
        ..Default::default()
    }
}

fn connect() -> Packet {
    let properties = Properties::from(PropertyFields {
        session_expiry_interval: Some(3600),
        receive_maximum: Some(64),
        ..Default::default()
    });
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: MqttStr::from("sensor-00042-ab12cd"),
        will: None,
        username: Some(MqttStr::from("device")),
        password: Some(Bytes::from_static(b"secret-token")),
        properties,
    }))
}

fn publish_benches(c: &mut Criterion) {
    for &(label, size) in &[("16B", 16usize), ("1KiB", 1024), ("64KiB", 65536)] {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let packet = Packet::Publish(publish(size));
            let mut wire = BytesMut::new();
            packet.encode(version, &mut wire).unwrap();
            let wire = wire.freeze();
            let mut group = c.benchmark_group(format!("publish_{version:?}"));
            group.throughput(Throughput::Bytes(wire.len() as u64));
            group.bench_function(BenchmarkId::new("decode", label), |b| {
                b.iter(|| {
                    // Copying into a BytesMut models the read buffer; decode itself is zero-copy.
                    let mut buf = BytesMut::from(&wire[..]);
                    black_box(decode(&mut buf, version, usize::MAX).unwrap())
                })
            });
            let mut out = BytesMut::with_capacity(wire.len() * 2);
            group.bench_function(BenchmarkId::new("encode", label), |b| {
                b.iter(|| {
                    out.clear();
                    packet.encode(version, &mut out).unwrap();
                    black_box(out.len())
                })
            });
            let Packet::Publish(ref p) = packet else {
                unreachable!()
            };
            let encoded = EncodedPublish::new(p, version, QoS::AtLeastOnce, false).unwrap();
            group.bench_function(BenchmarkId::new("fanout_write", label), |b| {
                let mut id = 0u16;
                b.iter(|| {
                    out.clear();
                    id = id.wrapping_add(1).max(1);
                    encoded.write_to(&mut out, id, false);
                    black_box(out.len())
                })
            });
            group.finish();
        }
    }
}

fn decode_in_place(c: &mut Criterion) {
    // The broker's hot path: many frames already in one read buffer, split without copying.
    let mut group = c.benchmark_group("publish_stream");
    let mut wire = BytesMut::new();
    for _ in 0..1000 {
        Packet::Publish(publish(16))
            .encode(ProtocolVersion::V3_1_1, &mut wire)
            .unwrap();
    }
    let wire = wire.freeze();
    group.throughput(Throughput::Elements(1000));
    group.bench_function("decode_1000x16B", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let mut n = 0;
            while let Ok(Some(packet)) = decode(&mut buf, ProtocolVersion::V3_1_1, usize::MAX) {
                black_box(&packet);
                n += 1;
            }
            n
        })
    });
    group.finish();
}

fn connect_benches(c: &mut Criterion) {
    let packet = connect();
    let mut wire = BytesMut::new();
    packet.encode(ProtocolVersion::V5, &mut wire).unwrap();
    let wire = wire.freeze();
    let mut group = c.benchmark_group("connect_v5");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            black_box(decode(&mut buf, ProtocolVersion::V5, usize::MAX).unwrap())
        })
    });
    let mut out = BytesMut::with_capacity(256);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            packet.encode(ProtocolVersion::V5, &mut out).unwrap();
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, publish_benches, decode_in_place, connect_benches);
criterion_main!(benches);
