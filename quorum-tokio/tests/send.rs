//! The device, its children and its futures can move between threads, so
//! requests run on any executor's worker threads.

use std::sync::Arc;

use quorum_tokio::AsyncChild;

#[test]
fn device_and_its_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<quorum_tokio::AsyncDevice>();
    send_sync::<quorum_tokio::MemChild>();
    send_sync::<quorum_tokio::InjectChild>();
    #[cfg(feature = "tokio")]
    send_sync::<quorum_tokio::TokioFileChild>();
    let kids: Vec<Arc<dyn AsyncChild>> = (0..3)
        .map(|_| Arc::new(quorum_tokio::MemChild::new(4096)) as _)
        .collect();
    let dev = quorum_tokio::AsyncDevice::new(quorum_proto::Config::new(3, 2), kids).unwrap();
    send(&dev.read(0, 512));
    send(&dev.write(0, vec![0; 512]));
    send(&dev.write_zeroes(0, 512));
    send(&dev.flush());
    send(&dev.size());
    send(&dev.add_child(Arc::new(quorum_tokio::MemChild::new(4096))));
    send(&dev.remove_child(quorum_proto::ChildId(0)));
    send(&dev.events());
}
