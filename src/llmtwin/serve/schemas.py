"""Request bodies of the HTTP API (validated by pydantic; a bad field is a 400 naming it).

OpenAI-shaped requests ignore fields llmtwin does not use (clients send many); llmtwin's own
endpoints (`/v1/search`) refuse unknown fields, so a typo is an error rather than a silent default.
Types are strict: "5" is not a number and 1 is not a boolean. Text is valid Unicode: JSON can
spell a lone UTF-16 surrogate ("\\ud800"), which no tokenizer or store can encode; it is a 400
naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"not valid Unicode text: a lone surrogate {text[e.start]!r} at character {e.start}"
        ) from None
    return text


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]
Number = StrictFloat | StrictInt
Filters = dict[Text, Text] | list[Text]
Mode = Literal["hybrid", "dense", "bm25"]


class _OpenAIShaped(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_OpenAIShaped):
    type: Text
    text: Text | None = None


class ChatMessage(_OpenAIShaped):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = None
    name: Text | None = None


class StreamOptions(_OpenAIShaped):
    include_usage: StrictBool = False


class ChatRequest(_OpenAIShaped):
    model: Annotated[Text, Field(min_length=1, max_length=200)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=512)]
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None  # accepted, not used
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    n: Annotated[StrictInt, Field(ge=1)] = 1
    seed: StrictInt | None = None  # accepted; the project's seed is used
    tools: list | None = None
    # llmtwin extensions (the openai client sends them with extra_body={...})
    rag: StrictBool | None = None  # answer with retrieval whatever the model
    k: Annotated[StrictInt, Field(ge=1, le=50)] | None = None
    mode: Mode | None = None
    filters: Filters | None = None
    repetition_penalty: Annotated[Number, Field(ge=1, le=3)] | None = None


class EmbeddingRequest(_OpenAIShaped):
    model: Annotated[Text, Field(min_length=1, max_length=200)]
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=256)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Annotated[Text, Field(min_length=1, max_length=4000)]
    k: Annotated[StrictInt, Field(ge=1, le=100)] | None = None
    mode: Mode | None = None
    filters: Filters | None = None
    retrieval: dict[Text, Text | StrictInt | StrictFloat | StrictBool | None] | None = None  # retrieval.* for this request
