"""The parameter masks' shortcuts (issue 16, params.py): a plain query's names taken out in C, and the patterns
of learned names that take a query apart in one call. Each is checked against the plain definition (split on
`&`, the name before the first `=`, `names.is_secret_name` decides) on hostile queries: percent-encoded names,
`+` in names, case, `user[password]`, Nginx prefixes, repeated and empty names, parts without `=`, `;`, `?`
and `#`, and more names than the patterns learn."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.processors.masking import MASK, Masker
from shipper.processors.names import SECRET_KEYS, is_secret_name, normalize
from shipper.processors.params import QUERY_NAMES_LEARNED

HOSTILE_NAMES = [
    "apikey", "APIKEY", "ApiKey", "%61pikey", "API%5FKEY", "api%255Fkey", "api-key", "x-api-key", "+apikey",
    "apikey+", "api+key", "user[password]", "a[b][token]", "http_apikey", "sent_http_x_api_key", "token", "TOKEN",
    "k%65y", "key", "keys", "monkey", "tokenizer", "seq", "page", "utm_source", "", " ", "a b", "pass%77ord",
    "\u212aey", "ke\u0443", "password", "x", "apikey;", "ap=ikey",
]  # fmt: skip
SEPARATORS = ["&", "&", "&", ";", "?", "#"]


def plain_reference(text: str, secrets: frozenset[str]) -> str:
    """The definition, for a query of `&` parts only."""
    parts = text.split("&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if eq and is_secret_name(name, secrets):
            parts[i] = f"{name}={MASK}"
    return "&".join(parts)


names = st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(alphabet="akeyAKEY%5F_-+[]", max_size=8))
values = st.one_of(st.sampled_from(["1", "", "d2351c11", "a=b", "apikey", "%20", "+"]), st.text(max_size=6))


@st.composite
def queries(draw: st.DrawFn, separators: list[str]) -> str:
    text = ""
    for i in range(draw(st.integers(1, 6))):
        if i:
            text += draw(st.sampled_from(separators))
        text += draw(names)
        if draw(st.integers(0, 5)):  # now and then a part without `=`
            text += "=" + draw(values)
    return text


@settings(max_examples=300, deadline=None)
@given(st.lists(queries(["&"]), min_size=1, max_size=12), st.sampled_from([(), ("x-custom-key",), ("a b",)]))
def test_plain_queries_are_masked_as_defined_while_names_are_learned(texts: list[str], extra: tuple[str, ...]) -> None:
    masker = Masker(extra)
    secrets = SECRET_KEYS | frozenset(normalize(n) for n in extra)
    for _ in range(2):  # the second round takes the learned patterns
        for text in texts:
            masked = masker.mask_params(text)
            if ";" in text or "?" in text or "#" in text:
                continue  # not plain: the general way (the other tests)
            assert masked == plain_reference(text, secrets), text
            if masked == text:
                assert masked is text  # callers tell "nothing masked" by identity
            raw, upstream = "/p?" + text, "/p?" + text
            assert masker.mask_targets(text, raw, upstream) == (masked, "/p?" + masked, "/p?" + masked)


plain_names = st.sampled_from([n for n in HOSTILE_NAMES if not any(c in n for c in "&;?#=")])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(plain_names, st.sampled_from(SEPARATORS)), min_size=1, max_size=6), max_size=8))
def test_no_secret_value_survives_any_separator(queries: list[list[tuple[str, str]]]) -> None:
    masker = Masker()
    marker = "S3CR3T"
    for _ in range(2):
        for parts in queries:
            # Each secret-named parameter gets a marker value; none may come out, whatever the separators.
            query = "".join(
                (separator if i else "") + f"{name}={marker if is_secret_name(name, SECRET_KEYS) else 'v'}"
                for i, (name, separator) in enumerate(parts)
            )
            assert marker not in masker.mask_params(query), query
            assert marker not in masker.mask_target("/p?" + query), query
            _, raw, upstream = masker.mask_targets(query, "/p?" + query, "/u?" + query)
            assert marker not in raw and marker not in str(upstream), query


def test_more_names_than_are_learned_still_masked() -> None:
    masker = Masker()
    many = [f"n{i}" for i in range(QUERY_NAMES_LEARNED + 20)]
    for name in many:
        assert masker.mask_params(f"{name}=1&seq=2") == f"{name}=1&seq=2"
    late = "&".join(f"{name}=1" for name in many[-5:])
    for secret in ("apikey", "%61pikey", "API%5FKEY", "user[password]", "+token"):
        assert masker.mask_params(f"{late}&{secret}=v&seq=1") == f"{late}&{secret}={MASK}&seq=1"


def test_a_learned_secret_name_is_masked_at_every_place_and_repeat() -> None:
    masker = Masker()
    assert masker.mask_params("seq=0&apikey=a") == f"seq=0&apikey={MASK}"  # learns seq (clean), apikey (secret)
    assert masker.mask_params("apikey=a&seq=1&apikey=b") == f"apikey={MASK}&seq=1&apikey={MASK}"
    assert masker.mask_params("apikey=&seq=1") == f"apikey={MASK}&seq=1"
    assert masker.mask_params("seq=apikey=x&apikey") == "seq=apikey=x&apikey"  # a value, a part without `=`
    assert masker.mask_params("seq=1&apikeys=2") == "seq=1&apikeys=2"
    assert masker.mask_params("seq=1&APIKEY=2") == f"seq=1&APIKEY={MASK}"  # a new spelling: decided, not learned-as
    assert masker.mask_params("seq=1&%61pikey=2") == f"seq=1&%61pikey={MASK}"
    assert masker.mask_params("seq=1&apikey=2#apikey=3") == f"seq=1&apikey={MASK}"  # not plain: the general way
    assert masker.mask_target("/p?seq=1&apikey=2#apikey=3") == f"/p?seq=1&apikey={MASK}#apikey={MASK}"


def test_kongs_decoded_query_object_is_masked_by_its_own_names() -> None:
    masker = Masker()
    query = {"seq": "1", "apikey": "k", "tag": ["a", "b"], "%61pikey": "p"}
    masked = masker.mask_query(query)
    assert masked == {"seq": "1", "apikey": MASK, "tag": ["a", "b"], "%61pikey": MASK}
    assert list(masked) == list(query) and query["apikey"] == "k"  # same order; the input is not changed
    clean = {"seq": "1", "tag": ["a"]}
    assert masker.mask_query(clean) is clean


# -- targets inside values, path parameters, nesting bounds -----------------------------------------------------
def test_a_value_that_is_a_target_has_its_secrets_masked_encoded_or_not() -> None:
    masker = Masker()
    assert masker.mask_params("next=/cb?token=s1&x=1") == f"next=/cb?token={MASK}&x=1"
    assert masker.mask_params("next=%2Fcb%3Ftoken%3Ds2&x=1") == f"next=%2Fcb%3Ftoken%3D{MASK}&x=1"
    assert masker.mask_params("next=%252Fcb%253Ftoken%253Ds3") == f"next=%252Fcb%253Ftoken%253D{MASK}"  # twice
    assert masker.mask_params("r=https%3A%2F%2Fapp%2Fcb%23access_token%3Ds4") == (
        f"r=https%3A%2F%2Fapp%2Fcb%23access_token%3D{MASK}"
    )
    assert masker.mask_params("r=https://u:s5@h/p&x=1") == f"r=https://{MASK}@h/p&x=1"
    for clean in ("q=a%20b&x=%3F", "email=a%40b.example&x=1", "next=%2Fhome%3Fpage%3D2"):
        assert masker.mask_params(clean) is clean  # an encoded target without a secret is left as it came
    # Kong's decoded query object: the same values, once decoded.
    query = {"next": "/cb?token=s6", "r": "https%3A%2F%2Fapp%23access_token%3Ds7", "tag": ["/a?key=s8", "b"], "x": True}
    assert not masker.query_is_clean(query)
    assert masker.mask_query(query) == {"next": f"/cb?token={MASK}", "r": f"https%3A%2F%2Fapp%23access_token%3D{MASK}",
                                        "tag": [f"/a?key={MASK}", "b"], "x": True}  # fmt: skip
    seen = {"seq": "1", "q": "a b"}
    assert masker.mask_query(seen) is seen  # its names now seen clean:
    assert masker.query_is_clean(seen) and masker.query_is_clean({"seq": ["1", "2"], "q": True})
    assert not masker.query_is_clean({"seq": ["1", "/a?token=x"]})


def test_path_parameters_are_masked_by_the_same_names() -> None:
    masker = Masker()
    assert masker.mask_target("/orders;jsessionid=x;token=s1/items?seq=1") == (
        f"/orders;jsessionid=x;token={MASK}/items?seq=1"
    )
    qs, raw, upstream = masker.mask_targets("seq=1", "/o;token=s2?seq=1", "/o;api_key=s3")
    assert (qs, raw, upstream) == ("seq=1", f"/o;token={MASK}?seq=1", f"/o;api_key={MASK}")
    plain = "/orders;v=2/items"
    assert masker.mask_target(plain) is plain


def test_targets_nested_in_values_are_bounded_not_recursed_without_end() -> None:
    """`/p?n0=?n1=?...` (any client can send one): each level is a few frames of recursion. Past MAX_NESTING the
    value is masked whole; before, 350 levels raised RecursionError and the record was dead-lettered as too deep."""
    masker = Masker()
    for sep in ("?", "#"):
        text = "".join(f"n{i}={sep}" for i in range(400)) + "x"
        masked = masker.mask_target("/p" + sep + text)
        assert masked.endswith(MASK) and len(masked) < 200
    shallow = "next=/a?b=/c?d=/e?token=s"
    assert masker.mask_params(shallow) == f"next=/a?b=/c?d=/e?token={MASK}"


def test_a_body_nested_in_a_body_keeps_the_depth_bound() -> None:
    """`{"body":{"body":...}}` 500 deep: each `body` key started the depth count again, until RecursionError."""
    masker = Masker()
    value: object = 1
    for _ in range(600):
        value = {"body": value}
    masked = masker.mask_body(value)
    depth = 0
    while isinstance(masked, dict):
        masked, depth = masked["body"], depth + 1
    assert masked == MASK and depth < 100


def test_credential_names_beyond_the_list_are_secret_by_their_endings() -> None:
    for name in ("X-Client-Secret", "X-Password", "X-Refresh-Token", "X-Vault-Token", "Private-Token",
                 "X-Goog-Api-Key", "X-Amz-Security-Token", "Ocp-Apim-Subscription-Key", "X-Amz-Signature",
                 "X-Amz-Credential", "X-CSRF-Token", "X-Auth", "new_password", "http_x_vault_token", "sig",
                 "X%2DVault%2DToken"):  # fmt: skip
        assert is_secret_name(name, SECRET_KEYS), name
    for name in ("idempotency-key", "sort_key", "signature", "code", "session", "x-request-id", "token_count",
                 "x_tokenizer", "monkey"):  # fmt: skip
        assert not is_secret_name(name, SECRET_KEYS), name
    masker = Masker()
    headers = {"X-Vault-Token": "s1", "Accept": "*/*"}
    assert masker.mask_headers(headers) == {"X-Vault-Token": MASK, "Accept": "*/*"}
