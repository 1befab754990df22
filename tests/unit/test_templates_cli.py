from declawd.templates.buildlog import TRUNCATED_LINE
from declawd.templates.cli import new_log_lines


def test_new_lines_by_position():
    assert new_log_lines([], ["a", "b"]) == ["a", "b"]
    assert new_log_lines(["a", "b"], ["a", "b", "c"]) == ["c"]


def test_new_lines_after_trimming():
    assert new_log_lines(["x", "y", "z"], [TRUNCATED_LINE, "y", "z", "w"]) == ["w"]
    assert new_log_lines(["old"], [TRUNCATED_LINE, "p", "q"]) == ["p", "q"]
