"""Resolving the intrinsics of a translated template against the local stack's names."""

from __future__ import annotations

import pytest

from local.intrinsics import Context, Physical, UnresolvableIntrinsic, resolve


@pytest.fixture
def context() -> Context:
    return Context(
        parameters={"Stage": "prod", "AWS::Region": "eu-west-1", "AWS::StackName": "fs"},
        resources={
            "Table": Physical("fs-Table", {"Arn": "arn:aws:dynamodb:eu-west-1:1:table/fs-Table"}),
            "Queue": Physical("http://q/fs-Queue", {"Arn": "arn:q", "QueueName": "fs-Queue"}),
        },
        conditions={"IsProd": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}},
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"Ref": "Table"}, "fs-Table"),
        ({"Ref": "Stage"}, "prod"),
        ({"Fn::GetAtt": ["Queue", "QueueName"]}, "fs-Queue"),
        ({"Fn::GetAtt": "Queue.Arn"}, "arn:q"),
        ({"Fn::Sub": "${AWS::StackName}-${Stage}-${Queue.QueueName}"}, "fs-prod-fs-Queue"),
        ({"Fn::Sub": ["${X}/${Stage}", {"X": {"Ref": "Table"}}]}, "fs-Table/prod"),
        ({"Fn::Sub": "literal ${!NotAVar}"}, "literal ${NotAVar}"),
        ({"Fn::Join": ["-", ["a", {"Ref": "Stage"}]]}, "a-prod"),
        ({"Fn::Select": [1, ["a", "b"]]}, "b"),
        ({"Fn::If": ["IsProd", "big", "small"]}, "big"),
        ({"Fn::ToJsonString": {"a": {"Ref": "Stage"}}}, '{"a":"prod"}'),
    ],
)
def test_an_intrinsic_resolves_to_the_local_value(
    context: Context, value: object, expected: object
) -> None:
    assert resolve(value, context) == expected


def test_no_value_removes_the_property(context: Context) -> None:
    assert resolve({"A": {"Ref": "AWS::NoValue"}, "B": 1}, context) == {"B": 1}


def test_an_unknown_name_says_which_attributes_exist(context: Context) -> None:
    with pytest.raises(UnresolvableIntrinsic, match="QueueName"):
        resolve({"Fn::GetAtt": ["Queue", "Nope"]}, context)
