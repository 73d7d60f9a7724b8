"""What the commands write, layer 5: `files` (run folders, atomic writes), `overlay` (drawing), `detections`
(detect.py's results.csv, images, videos, window), `frame_exports` (polygons, probabilities, COCO per frame),
`uncertainty` (what to label next), `val_report` (val.py's scores and plots)."""
