"""myca_ops.envvars: the one reader of the services' MYCA_* variables."""

import pytest

from myca_ops.envvars import number, switch, whole
from myca_ops.mas.settings import Settings, SettingsError
from myca_ops.voice import model


@pytest.mark.parametrize(
    "raw, value",
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
        ("", False),
        (None, False),
    ],
)
def test_switches_read_every_usual_spelling(raw, value):
    env = {} if raw is None else {"MYCA_MOSHI_HALF": raw}
    assert switch(env, "MYCA_MOSHI_HALF") is value
    assert switch({}, "MYCA_MOSHI_HALF", default=True) is True


def test_a_switch_with_another_word_names_the_variable():
    with pytest.raises(ValueError, match="MYCA_MOSHI_FORCE_GRAPHS_OFF is 'maybe': expected one of 1, true"):
        switch({"MYCA_MOSHI_FORCE_GRAPHS_OFF": "maybe"}, "MYCA_MOSHI_FORCE_GRAPHS_OFF")
    # The service reads its forces through the same parser: a typo stops the start with the name.
    with pytest.raises(ValueError, match="MYCA_MOSHI_FORCE_COMPILE_OFF is 'ja'"):
        model.decide_from_env({"MYCA_MOSHI_DEVICE": "cuda", "MYCA_MOSHI_FORCE_COMPILE_OFF": "ja"})


@pytest.mark.parametrize(
    "read, message",
    [
        (lambda env: whole(env, "MYCA_MOSHI_SLOTS", 0), "MYCA_MOSHI_SLOTS must be a whole number, got 'two'"),
        (lambda env: number(env, "MYCA_MOSHI_IDLE_TIMEOUT_S", 60), "must be a number of seconds, got 'two'"),
    ],
)
def test_a_value_that_is_no_number_names_the_variable_and_the_value(read, message):
    with pytest.raises(ValueError, match=message):
        read({"MYCA_MOSHI_SLOTS": "two", "MYCA_MOSHI_IDLE_TIMEOUT_S": "two"})


def test_unset_or_empty_is_the_default_and_a_bound_is_held():
    assert whole({}, "MYCA_MAS_BACKUP_KEEP", 7) == 7 and number({"X": ""}, "X", 2.5) == 2.5
    with pytest.raises(ValueError, match="MYCA_MAS_BACKUP_KEEP must be 1 or more, got 0"):
        whole({"MYCA_MAS_BACKUP_KEEP": "0"}, "MYCA_MAS_BACKUP_KEEP", 7, minimum=1)
    with pytest.raises(ValueError, match="MYCA_MAS_STATUS_TTL_S must be more than 0, got '0'"):
        number({"MYCA_MAS_STATUS_TTL_S": "0"}, "MYCA_MAS_STATUS_TTL_S", 2.0, positive=True)


def test_the_mas_says_which_of_its_settings_is_wrong():
    env = {"MYCA_MAS_DSN": "postgresql://mas@db/myca", "MYCA_MAS_STATUS_TTL_S": "soon"}
    with pytest.raises(SettingsError, match="MYCA_MAS_STATUS_TTL_S must be a number of seconds, got 'soon'"):
        Settings.from_env(env)
