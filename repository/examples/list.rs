//! Lists the backups of a local repository: `cargo run -p virtguard-repo --example list -- DIR`
//! (the key of an encrypted one in env `VIRTGUARD_KEY`).

use std::sync::Arc;

use virtguard_repo::{LocalStore, Repository, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: list REPOSITORY_DIR   (key of an encrypted one in VIRTGUARD_KEY)");
        std::process::exit(2);
    };
    let key = std::env::var("VIRTGUARD_KEY").ok();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(&dir));
    let repo = Repository::open(store, key.as_deref().map(str::as_bytes)).await?;
    for b in repo.list_backups(None, None).await? {
        let m = repo.load_manifest(&b).await?;
        let size: u64 = m.volumes.iter().map(|v| v.size).sum();
        println!("{b}  {} volume(s), {size} bytes", m.volumes.len());
    }
    Ok(())
}
