//! The cycle end to end: pause, scan, queue, resume, upload — against a real primary
//! and a real streaming replica.

use pgmaint_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn smoke() {
    let c = Cluster::up("smoke", 1);
    let p = c.primary().await;
    seed_blobs(&p, "public.blobs", "bigint", "g", 1000).await;
    let cfg = c.write_config("t.toml", "[[tasks]]\nname=\"b\"\nkind=\"row_checksum\"\ntable=\"blobs\"\nkey=\"id\"\ncontent=\"payload\"\nchecksum=\"payload_md5\"\n");
    c.run(&cfg, &["init"]).expect_code(0);
    c.wait_caught_up(1).await;
    c.run(&cfg, &["run"]).expect_code(0);
}
