//! Policy engine throughput: an organization with 20 rules evaluating OpenAI chat requests.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gatehouse::policies::{
    rules::validate, Action, AppliesTo, Format, Kind, Matcher, Rule, Severity,
};
use serde_json::{json, Value};

fn rule(i: usize, kind: Kind, action: Action, config: Value) -> Rule {
    Rule {
        id: format!("pol_{i}"),
        name: format!("{} {i}", kind.as_str()),
        kind,
        config: validate(kind, action, &config).expect("valid config"),
        action,
        applies_to: AppliesTo::Both,
        severity: Severity::High,
        enabled: true,
    }
}

fn words(prefix: &str) -> Vec<String> {
    (0..50).map(|i| format!("{prefix}{i}x")).collect()
}

fn org_rules() -> Vec<Rule> {
    let mut r = Vec::new();
    let mut add = |kind, action, config| r.push(rule(r.len(), kind, action, config));
    add(Kind::Pii, Action::Redact, json!({}));
    add(
        Kind::Pii,
        Action::Flag,
        json!({"kinds": ["email", "ip_address"]}),
    );
    add(Kind::Secrets, Action::Redact, json!({}));
    add(
        Kind::Secrets,
        Action::Block,
        json!({"kinds": ["private_key", "gatehouse_key"]}),
    );
    add(
        Kind::Keyword,
        Action::Flag,
        json!({"keywords": words("codename")}),
    );
    add(
        Kind::Keyword,
        Action::Redact,
        json!({"keywords": words("customer")}),
    );
    add(
        Kind::Keyword,
        Action::Block,
        json!({"keywords": words("forbidden")}),
    );
    add(
        Kind::Regex,
        Action::Redact,
        json!({"pattern": r"\bORD-\d{8}\b", "label": "order_id"}),
    );
    add(
        Kind::Regex,
        Action::Flag,
        json!({"pattern": r"(?i)\bproject\s+(?:zeus|hera|apollo)\b"}),
    );
    add(
        Kind::Regex,
        Action::Block,
        json!({"pattern": r"\bEMP\d{6}\b", "label": "employee_id"}),
    );
    add(
        Kind::Regex,
        Action::Flag,
        json!({"pattern": r"\b[A-Z]{3}-[0-9]{4}-[A-Z]{2}\b"}),
    );
    add(Kind::PromptInjection, Action::Block, json!({}));
    add(
        Kind::PromptInjection,
        Action::Flag,
        json!({"extra_phrases": ["open the pod bay doors"]}),
    );
    add(
        Kind::ModelDenylist,
        Action::Block,
        json!({"models": ["gpt-3.5*", "*-preview"]}),
    );
    add(
        Kind::ModelAllowlist,
        Action::Flag,
        json!({"models": ["gpt-4o*", "claude-3-?-sonnet*"]}),
    );
    add(Kind::MaxTokens, Action::Block, json!({"max": 8192}));
    add(Kind::MaxTokens, Action::Flag, json!({"max": 4096}));
    add(
        Kind::Pii,
        Action::Block,
        json!({"kinds": ["credit_card", "ssn", "iban"]}),
    );
    add(
        Kind::Secrets,
        Action::Flag,
        json!({"kinds": ["aws_access_key", "jwt", "openai_key"]}),
    );
    add(
        Kind::Keyword,
        Action::Flag,
        json!({"keywords": ["confidential", "internal only", "do not share"]}),
    );
    assert_eq!(r.len(), 20);
    r
}

/// Clean English-like prose of about `n` bytes, with numbers and punctuation.
fn prose(n: usize) -> String {
    let sentences = [
        "The quarterly report shows revenue grew by 12 percent compared to last year. ",
        "Please summarize the attached meeting notes and list the action items.\n",
        "Our team shipped version 3.2 of the mobile app on Tuesday, with 45 bug fixes. ",
        "Write a short poem about autumn leaves falling in the park near the river. ",
        "Customers asked about shipping times to Canada and the return policy.\n",
        "Translate the following paragraph into French, keeping a formal tone. ",
        "In 2023 the company hired 150 engineers across offices in Berlin and Austin. ",
        "Explain how a hash map handles collisions, with an example in Rust.\n",
    ];
    let mut s = String::with_capacity(n + 100);
    let mut i = 0;
    while s.len() < n {
        s.push_str(sentences[i % sentences.len()]);
        i += 1;
    }
    s.truncate(n);
    s
}

fn request(prompt: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "gpt-4o-mini",
        "max_tokens": 1024,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt}
        ]
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let matcher = Matcher::compile(&org_rules());
    let small = request(&prose(1024));
    let big = request(&prose(64 * 1024));
    let mut dirty = prose(64 * 1024);
    for (at, hit) in [
        (1_000, " contact jane.doe@example.com "),
        (9_000, " card 4111 1111 1111 1111 "),
        (20_000, " key AKIAIOSFODNN7EXAMPLE "),
        (33_000, " order ORD-12345678 "),
        (47_000, " customer7x asked "),
        (60_000, " call +1 415-555-2671 "),
    ] {
        let at = (0..=at).rev().find(|i| dirty.is_char_boundary(*i)).unwrap();
        dirty.insert_str(at, hit);
    }
    let dirty = request(&dirty);
    // Non-ASCII prose (accents, curly quotes, CJK): exercises the Unicode paths.
    let intl = request(
        &prose(64 * 1024)
            .replace("The ", "“Thé” ")
            .replace("park", "公園"),
    );
    {
        let out = matcher.check_request(Format::OpenAi, Some("gpt-4o-mini"), &dirty);
        assert!(out.redacted.is_some(), "dirty prompt must be redacted");
        let out = matcher.check_request(Format::OpenAi, Some("gpt-4o-mini"), &big);
        assert!(out.hits.is_empty(), "clean prompt hit: {:?}", out.hits);
    }
    let mut g = c.benchmark_group("policies");
    for (name, body) in [
        ("clean_1k", &small),
        ("clean_64k", &big),
        ("redact_64k", &dirty),
        ("clean_64k_unicode", &intl),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| matcher.check_request(Format::OpenAi, Some("gpt-4o-mini"), black_box(body)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
