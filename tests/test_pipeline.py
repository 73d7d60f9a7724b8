"""pipeline.py: reading ahead and finishing behind keep order, bound memory and raise failures in the caller."""

import threading
import time

import pytest

from segtoolkit.inference.pipeline import Finisher, Prefetcher


def test_prefetcher_yields_every_item_in_order_then_stops():
    frames = Prefetcher(range(50), depth=2)
    assert list(frames) == list(range(50))
    assert list(frames) == []  # ended stays ended
    frames.close()
    assert not frames.thread.is_alive()


def test_prefetcher_reads_at_most_depth_ahead_and_close_stops_it():
    taken = []

    def source():
        for number in range(1000):
            taken.append(number)
            yield number

    frames = Prefetcher(source(), depth=2)
    assert next(frames) == 0
    time.sleep(0.3)
    assert len(taken) <= 4  # the item handed out, two queued, one waiting to be queued
    frames.close()
    assert not frames.thread.is_alive() and len(taken) <= 4


def test_prefetcher_raises_the_source_failure_in_the_consumer():
    def source():
        yield 1
        raise ValueError("frame 2 is broken")

    frames = Prefetcher(source())
    assert next(frames) == 1
    with pytest.raises(ValueError, match="frame 2 is broken"):
        next(frames)
    with pytest.raises(StopIteration):
        next(frames)
    frames.close()


def test_finisher_runs_jobs_in_order_in_another_thread():
    done, threads = [], set()

    def job(number):
        time.sleep(0.001 * (number % 3))
        done.append(number)
        threads.add(threading.current_thread().name)

    finisher = Finisher(job, depth=2)
    for number in range(30):
        finisher.submit(number)
    finisher.close()
    assert done == list(range(30)) and threads == {"finisher"}


def test_finisher_submit_blocks_while_depth_jobs_wait():
    release, started = threading.Event(), []

    def job(number):
        started.append(number)
        release.wait(5)

    finisher = Finisher(job, depth=2)
    submitted = []
    producer = threading.Thread(target=lambda: [submitted.append(finisher.submit(n)) for n in range(10)])
    producer.start()
    time.sleep(0.3)
    assert len(submitted) == 3  # one running, two queued
    release.set()
    producer.join(5)
    finisher.close()
    assert started == list(range(10))


def test_finisher_failure_is_raised_by_the_next_submit_and_later_jobs_are_dropped():
    done = []

    def job(number):
        if number == 1:
            raise OSError("disk full writing frame 1")
        done.append(number)

    finisher = Finisher(job, depth=1)
    finisher.submit(0)
    finisher.submit(1)
    with pytest.raises(OSError, match="disk full"):
        for number in range(2, 100):
            finisher.submit(number)
            time.sleep(0.01)
    finisher.close()  # reported once: close() in a `finally` does not raise it again
    assert done == [0]


def test_finisher_close_raises_a_failure_not_yet_reported():
    finisher = Finisher(lambda: 1 / 0)
    finisher.submit()
    with pytest.raises(ZeroDivisionError):
        finisher.close()
    assert not finisher.thread.is_alive()


def test_a_starved_prefetcher_hands_reading_back_without_losing_or_repeating(monkeypatch):
    from segtoolkit.inference import pipeline
    monkeypatch.setattr(pipeline, "STARVED_SECONDS", 0.2)
    slow = threading.Event()

    def source():
        for number in range(12):
            if number == 5:
                slow.wait(0.6)  # the thread gets no CPU for a while: the consumer waits 0.2 s, then reads itself
            yield number

    frames = Prefetcher(source(), depth=2)
    assert list(frames) == list(range(12)) and frames.inline
    frames.close()


def test_a_starved_finisher_hands_its_jobs_back_in_order(monkeypatch):
    from segtoolkit.inference import pipeline
    monkeypatch.setattr(pipeline, "STARVED_SECONDS", 0.2)
    done = []

    def job(number):
        if number == 1:
            time.sleep(0.6)
        done.append((number, threading.current_thread().name))

    finisher = Finisher(job, depth=1)
    for number in range(8):
        finisher.submit(number)
    finisher.close()
    assert [number for number, _ in done] == list(range(8)) and finisher.inline
    assert done[-1][1] == threading.main_thread().name  # the rest ran in the caller


def test_helper_threads_run_at_the_lowest_priority():
    import os
    seen = []
    finisher = Finisher(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    finisher.submit()
    finisher.close()
    assert seen == [19]


def test_detect_writes_every_frame_in_order_through_the_threads(untrained_checkpoint, tmp_path, capsys):
    import detect
    from helpers.data import video_facts, write_video
    from helpers.detect_runs import read_rows
    video = write_video(tmp_path / "clip.mp4", 20)
    summary = detect.run(model=untrained_checkpoint, source=video, save_video=True, save_dir=tmp_path / "out")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("video ")]
    assert summary["frames"] == 20 and [line.split("(")[1].split("/")[0] for line in lines] == \
        [str(n) for n in range(1, 21)]  # printed in frame order
    assert [row["frame"] for row in read_rows(tmp_path / "out")] == [str(n) for n in range(20)]
    assert video_facts(tmp_path / "out" / "clip.mp4")[:1] == (20,)


def test_a_write_failure_in_the_finisher_is_a_one_line_error_and_earlier_rows_stay(untrained_checkpoint, tmp_path,
                                                                                    monkeypatch, capsys):
    import detect
    from segtoolkit.outputs import detections as detect_outputs
    from helpers.data import video_facts, write_video
    from helpers.detect_runs import read_rows
    from segtoolkit.errors import UserError
    video = write_video(tmp_path / "clip.mp4", 30)
    original, written = detect_outputs.ResultWriter.write_video_frame, []

    def fail_on_fifth(self, frame, *rest):
        if frame.index == 4:
            raise UserError(f"cannot write {frame.path}: disk full")
        written.append(frame.index)
        original(self, frame, *rest)

    monkeypatch.setattr(detect_outputs.ResultWriter, "write_video_frame", fail_on_fifth)
    args = detect.parse_args(["--model", str(untrained_checkpoint), "--source", str(video), "--save-video",
                              "--save-dir", str(tmp_path / "out")])
    assert detect.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: cannot write {video}: disk full"]
    assert written == [0, 1, 2, 3]
    assert [row["frame"] for row in read_rows(tmp_path / "out")] == ["0", "1", "2", "3"]
    assert video_facts(tmp_path / "out" / "clip.mp4")[0] == 4  # closed: it plays, with those four frames
