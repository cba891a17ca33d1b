//! The pure parts of the data path, per operation (`cargo bench --bench pure`; `scripts/bench.sh`
//! runs it with the stack benchmark). Inputs are the benchmark's realistic messages
//! (`ci_worker::tools::bench::events`): a DigitalWatermark request and its `TaskFinish` event with MediaInfo.
//!
//! - `sign/post_jobs`: the COS signature of one `POST /jobs` (the headers the client signs).
//! - `request/parse_validate`: request JSON → validated CI `<Request>` tree (the submission path's pure part).
//! - `request/to_xml`: that tree → the XML body (`ci::xml::to_xml`).
//! - `event/{xml,json}`: completion event → parse → normalize → result JSON (the completion path's
//!   pure part, what one message costs the worker besides Pulsar).
//! - `event/{xml,json}_parse`, `result/to_json`: the same, split.

use ci_worker::callback::event::parse_event;
use ci_worker::ci::{sign, xml};
use ci_worker::config::Settings;
use ci_worker::request::SubmitRequest;
use ci_worker::result::normalize::{normalize_event, normalize_owned};
use ci_worker::tools::bench::events::{self, EventFormat};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

fn signing(c: &mut Criterion) {
    let body = xml::to_xml("Request", &valid_job()).unwrap();
    let md5 = "kpnUsFRZCDCAWgAGKdNGcQ==";
    let length = body.len().to_string();
    let headers = [
        (
            "host",
            "examplebucket-1250000000.ci.ap-guangzhou.myqcloud.com",
        ),
        ("content-type", "application/xml"),
        ("content-md5", md5),
        ("content-length", length.as_str()),
    ];
    c.bench_function("sign/post_jobs", |b| {
        b.iter(|| {
            sign::sign(
                black_box("AKIDbench000000000000000000000000000"),
                black_box("benchsecretkey0123456789abcdef00"),
                "post",
                "/jobs",
                &[],
                black_box(&headers[..]),
                1_767_225_600,
                1_767_229_200,
            )
        })
    });
}

fn valid_job() -> ci_worker::ci::tree::Node<'static> {
    let payload = events::request("bench", 42, EventFormat::Json, false);
    SubmitRequest::parse(&payload)
        .unwrap()
        .validate(&Settings::default().ci)
        .unwrap()
        .ci_job
}

fn request(c: &mut Criterion) {
    let payload = events::request("bench", 42, EventFormat::Json, false);
    let ci = Settings::default().ci;
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_validate", |b| {
        b.iter(|| {
            SubmitRequest::parse(black_box(&payload))
                .unwrap()
                .validate(&ci)
                .unwrap()
        })
    });
    let job = valid_job();
    g.bench_function("to_xml", |b| {
        b.iter(|| xml::to_xml("Request", black_box(&job)).unwrap())
    });
    g.finish();
}

fn event(c: &mut Criterion) {
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    for (name, format) in [("xml", EventFormat::Xml), ("json", EventFormat::Json)] {
        let payload = events::completion_event("bench", 42, format);
        g.bench_function(name, |b| {
            b.iter(|| {
                let event = parse_event(black_box(&payload)).unwrap();
                normalize_owned(event)
                    .iter()
                    .map(|r| r.to_json().len())
                    .sum::<usize>()
            })
        });
        g.bench_function(format!("{name}_parse"), |b| {
            b.iter(|| parse_event(black_box(&payload)).unwrap())
        });
    }
    g.finish();
    let payload = events::completion_event("bench", 42, EventFormat::Xml);
    let event = parse_event(&payload).unwrap();
    let result = normalize_event(&event).remove(0);
    c.bench_function("result/normalize", |b| {
        b.iter_batched(|| event.clone(), normalize_owned, BatchSize::SmallInput)
    });
    c.bench_function("result/to_json", |b| {
        b.iter(|| black_box(&result).to_json())
    });
}

criterion_group! {
    name = benches;
    // Short runs: the figures are stable to a few per cent on an idle machine, and scripts/bench.sh
    // must finish in minutes. `cargo bench --bench pure -- --measurement-time 10` for more.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = signing, request, event
}
criterion_main!(benches);
