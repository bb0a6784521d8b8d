//! Authenticating an API key that this node has already verified: SHA-256 of the presented
//! value, one lookup in the cache, the status/expiry/organization checks — no I/O.
//! Target (issue 5): under 2 µs per verification. Run: `cargo bench --bench keys`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::{keys::cache::KeyCache, storage::Db};

/// A database with one organization and `n` active secret keys; returns the key values.
fn setup(rt: &tokio::runtime::Runtime, dir: &std::path::Path, n: usize) -> (Db, Vec<String>) {
    rt.block_on(async {
        let db = Db::connect(&format!("sqlite://{}", dir.join("bench.db").display()), 4)
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let now = gatehouse::storage::now();
        sqlx::query("INSERT INTO organizations (id, name, slug, created_at, updated_at) VALUES ('org_bench', 'B', 'bench', $1, $1)")
            .bind(&now)
            .execute(db.pool())
            .await
            .unwrap();
        let mut tokens = Vec::with_capacity(n);
        let mut tx = db.pool().begin().await.unwrap();
        for i in 0..n {
            let token = format!("sk_live_{}", gatehouse::crypto::random_base62(40));
            let id = format!("key_{i}");
            sqlx::query("INSERT INTO api_keys (id, organization_id, name, type, environment, key_preview, scopes, status, created_at, updated_at) VALUES ($1, 'org_bench', 'k', 'secret', 'live', 'p', '[\"gateway:proxy\"]', 'active', $2, $2)")
                .bind(&id)
                .bind(&now)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("INSERT INTO api_key_secrets (secret_hash, key_id, created_at) VALUES ($1, $2, $3)")
                .bind(gatehouse::crypto::sha256_hex(token.as_bytes()))
                .bind(&id)
                .bind(&now)
                .execute(&mut *tx)
                .await
                .unwrap();
            tokens.push(token);
        }
        tx.commit().await.unwrap();
        (db, tokens)
    })
}

fn cached_key_verification(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for n in [1usize, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let (db, tokens) = setup(&rt, dir.path(), n);
        let cache = std::sync::Arc::new(KeyCache::new());
        rt.block_on(async {
            for t in &tokens {
                cache.authenticate(&db, t, None, None).await.unwrap();
            }
        });
        let mut i = 0usize;
        c.bench_function(&format!("keys/verify cached/{n} key(s) in cache"), |b| {
            b.iter(|| {
                i = (i + 7919) % tokens.len();
                let key = cache.verify_cached(black_box(&tokens[i]), None, None);
                assert!(matches!(key, Some(Ok(_))));
            })
        });
        let unknown = format!("sk_live_{}", "x".repeat(40));
        rt.block_on(async {
            let _ = cache.authenticate(&db, &unknown, None, None).await;
        });
        c.bench_function(
            &format!("keys/refuse unknown (negative cache)/{n} key(s)"),
            |b| {
                b.iter(|| {
                    let key = cache.verify_cached(black_box(&unknown), None, None);
                    // `None` once the 5 s negative entry has aged out: still no database here.
                    assert!(!matches!(key, Some(Ok(_))));
                })
            },
        );
    }
}

criterion_group!(benches, cached_key_verification);
criterion_main!(benches);
