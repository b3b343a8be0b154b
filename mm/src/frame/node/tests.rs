//! Unit tests of `node`.

use super::*;

#[test]
fn node_map_lookup_and_errors() {
    let mut map = NodeMap::new();
    map.add(Pfn(100), Pfn(200), NodeId(1)).unwrap();
    map.add(Pfn(0), Pfn(100), NodeId(0)).unwrap();
    map.add(Pfn(300), Pfn(400), NodeId(1)).unwrap();
    assert_eq!(
        map.add(Pfn(150), Pfn(250), NodeId(2)),
        Err(NodeMapError::Overlap)
    );
    assert_eq!(
        map.add(Pfn(250), Pfn(301), NodeId(2)),
        Err(NodeMapError::Overlap)
    );
    assert_eq!(
        map.add(Pfn(5), Pfn(5), NodeId(2)),
        Err(NodeMapError::EmptyRange)
    );
    assert_eq!(map.node_of(Pfn(0)), Some(NodeId(0)));
    assert_eq!(map.node_of(Pfn(199)), Some(NodeId(1)));
    assert_eq!(map.node_of(Pfn(200)), None);
    assert_eq!(map.node_of(Pfn(399)), Some(NodeId(1)));
    assert_eq!(
        map.range_of(Pfn(150)),
        Some(NodeRange {
            start: Pfn(100),
            end: Pfn(200),
            node: NodeId(1)
        })
    );
    assert_eq!(map.range_of(Pfn(250)), None);
    assert_eq!(map.nodes(), [NodeId(0), NodeId(1)]);
    assert!(map.contains(NodeId(1)) && !map.contains(NodeId(2)));
    assert_eq!(map.ranges_of(NodeId(1)).count(), 2);
    assert_eq!(NodeMap::single(Pfn(3), Pfn(3)), NodeMap::new());
}
