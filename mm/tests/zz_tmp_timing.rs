use mm::addr::Pfn;
use mm::buddy::BuddyAllocator;
use mm::frame::{FrameMeta, FrameTable};
#[test]
fn timing() {
    let n = 5 << 17;
    let t0 = std::time::Instant::now();
    let recs: Vec<FrameMeta> = (0..n).map(|_| FrameMeta::new()).collect();
    let mut b = BuddyAllocator::new(FrameTable::new(&recs).unwrap());
    b.add_free_range(Pfn(1), Pfn(n as u64)).unwrap();
    eprintln!("setup {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    for _ in 0..10 { b.audit().unwrap(); }
    eprintln!("audit {:?}", t0.elapsed() / 10);
    let t0 = std::time::Instant::now();
    let v = vec![false; n];
    for _ in 0..10 { std::hint::black_box(v.iter().filter(|x| !**x).count()); }
    eprintln!("bitmap scan {:?}", t0.elapsed() / 10);
}
