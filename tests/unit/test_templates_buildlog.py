from declawd.templates.buildlog import TRUNCATED_LINE, BuildLog


def test_whole_log_while_it_fits():
    log = BuildLog(max_lines=5)
    for i in range(5):
        log.append(f"l{i}")
    assert log.lines() == [f"l{i}" for i in range(5)]
    assert not log.truncated
    log.append("l5")
    assert log.lines() == [TRUNCATED_LINE, "l2", "l3", "l4", "l5"]


def test_short_log_is_untouched():
    log = BuildLog(max_lines=10)
    log.append("a\nb")
    assert log.lines() == ["a", "b"]
    assert not log.truncated


def test_trimmed_log_starts_with_the_exact_marker_and_stays_bounded():
    log = BuildLog(max_lines=4)
    for i in range(10):
        log.append(f"line {i}")
    assert log.lines() == [TRUNCATED_LINE, "line 7", "line 8", "line 9"]
    assert TRUNCATED_LINE == "... [earlier build output truncated]"


def test_default_bound_is_about_2000_lines():
    log = BuildLog()
    for i in range(5000):
        log.append(str(i))
    lines = log.lines()
    assert len(lines) == 2000 and lines[0] == TRUNCATED_LINE and lines[-1] == "4999"


def test_carriage_return_progress_keeps_the_final_state_and_long_lines_are_cut():
    log = BuildLog()
    log.append("10%\r50%\r100%")
    log.append("x" * 10000)
    assert log.lines()[0] == "100%"
    assert len(log.lines()[1]) < 5000


def test_restored_log_keeps_the_marker():
    log = BuildLog(max_lines=4, lines=[TRUNCATED_LINE, "a", "b"])
    assert log.lines() == [TRUNCATED_LINE, "a", "b"]
