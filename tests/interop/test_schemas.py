"""The message schemas are a public contract: the shipped examples must satisfy them, and the
schemas must refuse what the worker refuses (so a schema that accepts everything fails here)."""
import copy
import json
import pathlib

import jsonschema
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


def load(name):
    return json.loads((SCHEMAS / name).read_text())


REQUEST = load("request.schema.json")
RESULT = load("result.schema.json")


def validator(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", ["examples/request.json", "examples/request-kafka.json"])
def test_request_examples_are_valid(name):
    validator(REQUEST).validate(load(name))


@pytest.mark.parametrize(
    "name",
    ["examples/result-succeeded.json", "examples/result-rejected.json", "examples/result-workflow-task.json"],
)
def test_result_examples_are_valid(name):
    validator(RESULT).validate(load(name))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r["job"].update(Input={"Url": "https://example.com/in/a.mp4"}),
        lambda r: r["job"].update(Input={"Vod": {"FileId": "5285890799710173650", "SubAppId": "1500000"}}),
        lambda r: r["job"].update(Tag="Tts") or r["job"].pop("Input"),
    ],
)
def test_request_schema_takes_inputs_without_object(mutate):
    ok = copy.deepcopy(load("examples/request.json"))
    mutate(ok)
    validator(REQUEST).validate(ok)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("request_id"),
        lambda r: r.update(request_id=""),
        lambda r: r.update(bucket="NoAppId"),
        lambda r: r["job"].pop("Tag"),
        lambda r: r["job"]["Input"].pop("Object"),
        lambda r: r["job"].pop("Input"),
        lambda r: r["job"].update(Input={"Url": "ftp://example.com/a.mp4"}),
        lambda r: r["job"].update(Input={"Vod": {"SubAppId": "1"}}),
        lambda r: r["job"].update(CallBackType="Url"),
        lambda r: r["job"].update(CallBackKafkaConfig={"Region": "ap-guangzhou", "Topic": "t"}),
        lambda r: r["job"].update(QueueType="SpeedTranscoding"),
        lambda r: r["job"]["Operation"]["DigitalWatermark"].update(Version="V2"),
        lambda r: r["job"]["Operation"].update(UserData="tab\there"),
    ],
)
def test_request_schema_refuses_bad_requests(mutate):
    bad = copy.deepcopy(load("examples/request.json"))
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError):
        validator(REQUEST).validate(bad)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.update(state="done"),
        lambda r: r.update(version=1),
        lambda r: r.pop("operation"),
        lambda r: r.update(workflow=None),
        lambda r: r["media_result"]["OutputFile"].update(ObjectName="output/out.mp4"),
        lambda r: r["media_result"]["OutputFile"].update(Md5Info={"Md5": "043221daee3f4e15ff13f42329f15eb1"}),
        lambda r: r["media_info"]["Stream"].update(Video={"Index": "0"}),
        lambda r: r.update(created_at="2022-06-30T18:37:37+0800"),
        lambda r: r.update(surprise=True),
        lambda r: r.pop("job_id"),
    ],
)
def test_result_schema_refuses_bad_results(mutate):
    bad = copy.deepcopy(load("examples/result-succeeded.json"))
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError):
        validator(RESULT).validate(bad)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r["task"]["ResultInfo"].update(ObjectInfo=r["task"]["ResultInfo"]["ObjectInfo"][0]),
        lambda r: r["input_detail"].update(CosHeaders={"Key": "Content-Type", "Value": "video/mp4"}),
        lambda r: r.update(workflow=r["workflow"][0]),
        lambda r: r["workflow"][0].pop("name"),
    ],
)
def test_result_schema_refuses_single_values_where_lists_belong(mutate):
    bad = copy.deepcopy(load("examples/result-workflow-task.json"))
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError):
        validator(RESULT).validate(bad)
