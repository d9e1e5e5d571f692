// Block types and their config fields as the server validates them. The object below is JSON
// (tests/block_schema.rs parses it out of this file and checks it against crates/resonant-engine/src/block/, one file per type);
// it is a module rather than a .json file so the built package has no JSON import attribute,
// which older bundlers and Node before 20.10 cannot load.
export default {
  "$comment": "Block types and their config fields as the server validates them (crates/resonant-engine/src/block/, one file per type); checked against that validation by tests/block_schema.rs. Handle \"\" is a block's default handle (no sourceHandle/targetHandle). A condition with cases leaves through each case's handle and casesOutputs instead of outputs. commonFields apply to every type; a block whose onError is route also leaves through handle \"error\". min/max are inclusive, exclusiveMin is not.",
  "version": 1,
  "commonFields": {
    "retry": {
      "kind": "retry",
      "required": false,
      "label": "Retry",
      "help": "How failed attempts are retried; problems name this field.",
      "fields": {
        "attempts": {
          "kind": "integer",
          "required": false,
          "min": 1,
          "max": 100,
          "default": 3,
          "label": "Attempts",
          "help": "Attempts in all, the first included (1: no retry)."
        },
        "initialIntervalMs": {
          "kind": "integer",
          "required": false,
          "min": 0,
          "default": 500,
          "label": "First wait (ms)"
        },
        "multiplier": {
          "kind": "number",
          "required": false,
          "min": 1,
          "max": 100,
          "default": 2,
          "label": "Multiplier",
          "help": "Each wait is this many times the previous one."
        },
        "maxIntervalMs": {
          "kind": "integer",
          "required": false,
          "min": 0,
          "default": 30000,
          "label": "Longest wait (ms)"
        },
        "maxRetryAfterMs": {
          "kind": "integer",
          "required": false,
          "min": 0,
          "default": 120000,
          "label": "Longest Retry-After (ms)",
          "help": "A longer Retry-After fails at once."
        },
        "jitter": {
          "kind": "number",
          "required": false,
          "min": 0,
          "max": 1,
          "default": 0.2,
          "label": "Jitter",
          "help": "Each wait is scaled by a random factor in 1 ± jitter."
        },
        "retryOn": {
          "kind": "stringArray",
          "required": false,
          "enum": [
            "timeout",
            "network",
            "rate-limited",
            "server",
            "client",
            "invalid",
            "refused"
          ],
          "default": [
            "timeout",
            "network",
            "rate-limited",
            "server"
          ],
          "label": "Retry on",
          "help": "Which failures are retried."
        },
        "attemptTimeoutMs": {
          "kind": "integer",
          "required": false,
          "min": 1,
          "label": "Attempt timeout (ms)"
        },
        "totalTimeoutMs": {
          "kind": "integer",
          "required": false,
          "min": 1,
          "label": "Total timeout (ms)",
          "help": "Bounds all attempts and waits."
        }
      }
    },
    "timeoutMs": {
      "kind": "integer",
      "required": false,
      "min": 1,
      "label": "Attempt timeout (ms)",
      "help": "One attempt's limit (the same as retry.attemptTimeoutMs)."
    },
    "onError": {
      "kind": "enum",
      "required": false,
      "enum": [
        "fail",
        "continue",
        "route"
      ],
      "default": "fail",
      "label": "On error",
      "help": "fail: the run fails; continue: the block's output becomes {error: {message, blockId}} and the run goes on; route: that output leaves only through the block's error handle."
    }
  },
  "types": {
    "input": {
      "label": "Input",
      "description": "Starts the run with the execution's input, or one field of it.",
      "handles": {
        "inputs": [],
        "outputs": [
          ""
        ]
      },
      "fields": {
        "field": {
          "kind": "string",
          "required": false,
          "label": "Field",
          "help": "Take only this field of the execution input; empty: the whole input."
        }
      },
      "example": {
        "field": "topic"
      }
    },
    "ai": {
      "label": "AI",
      "description": "Generates text with a model the router picks (or the one named).",
      "handles": {
        "inputs": [
          ""
        ],
        "outputs": [
          ""
        ]
      },
      "fields": {
        "userPromptTemplate": {
          "kind": "template",
          "required": true,
          "label": "Prompt",
          "help": "What to ask. Sees {{ upstream }}, {{ input.x }} and {{ blocks.<id>.output }}."
        },
        "systemPrompt": {
          "kind": "template",
          "required": false,
          "label": "System prompt"
        },
        "temperature": {
          "kind": "number",
          "required": false,
          "min": 0,
          "max": 2,
          "label": "Temperature",
          "help": "Lower is more predictable; empty: the provider's default."
        },
        "maxTokens": {
          "kind": "integer",
          "required": false,
          "min": 1,
          "default": 4096,
          "label": "Max tokens",
          "help": "The longest answer, in tokens."
        },
        "outputFormat": {
          "kind": "enum",
          "required": false,
          "enum": [
            "text",
            "json",
            "markdown"
          ],
          "default": "text",
          "label": "Output format",
          "help": "json parses the answer (one repair request if it does not parse)."
        },
        "provider": {
          "kind": "string",
          "required": false,
          "label": "Provider",
          "help": "A provider id (claude-3-5-sonnet), a family (openai) or demo; empty: the router chooses."
        },
        "model": {
          "kind": "string",
          "required": false,
          "label": "Model",
          "help": "A model of that provider; empty: its default."
        },
        "strengths": {
          "kind": "stringArray",
          "required": false,
          "label": "Strengths",
          "help": "What the router should prefer in a provider."
        }
      },
      "example": {
        "userPromptTemplate": "Summarise {{ upstream }} in three sentences.",
        "temperature": 0.7
      }
    },
    "output": {
      "label": "Output",
      "description": "Collects a result of the run.",
      "handles": {
        "inputs": [
          ""
        ],
        "outputs": []
      },
      "fields": {
        "template": {
          "kind": "template",
          "required": false,
          "label": "Template",
          "help": "The output's value; empty: the upstream value."
        }
      },
      "example": {}
    },
    "condition": {
      "label": "Condition",
      "description": "Routes to true or false, or with cases to the first matching case.",
      "handles": {
        "inputs": [
          ""
        ],
        "outputs": [
          "true",
          "false"
        ],
        "casesOutputs": [
          "default"
        ]
      },
      "fields": {
        "expression": {
          "kind": "expression",
          "required": true,
          "requiredUnless": "cases",
          "label": "Expression",
          "help": "Leaves through true when it holds, else false."
        },
        "cases": {
          "kind": "cases",
          "required": false,
          "label": "Cases",
          "help": "A switch instead: each {handle, expression}; the first that holds is taken, else default. Handles are unique and not default.",
          "example": [
            {
              "handle": "long",
              "expression": "upstream | length > 100"
            },
            {
              "handle": "short",
              "expression": "upstream | length < 10"
            }
          ]
        }
      },
      "example": {
        "expression": "upstream | length > 100"
      }
    },
    "transform": {
      "label": "Transform",
      "description": "Renders a template over earlier outputs.",
      "handles": {
        "inputs": [
          ""
        ],
        "outputs": [
          ""
        ]
      },
      "fields": {
        "template": {
          "kind": "template",
          "required": true,
          "label": "Template",
          "help": "The value; sees {{ upstream }}, {{ input.x }} and {{ blocks.<id>.output }}."
        },
        "outputFormat": {
          "kind": "enum",
          "required": false,
          "enum": [
            "text",
            "json"
          ],
          "default": "text",
          "label": "Output format",
          "help": "json parses the rendered text."
        }
      },
      "example": {
        "template": "{{ upstream | upper }}"
      }
    },
    "loop": {
      "label": "Loop",
      "description": "Runs its body once per item; the body returns through the next handle.",
      "handles": {
        "inputs": [
          "",
          "next"
        ],
        "outputs": [
          "body",
          "done"
        ]
      },
      "fields": {
        "items": {
          "kind": "expression",
          "required": false,
          "label": "Items",
          "help": "The array to loop over; empty: the upstream value."
        },
        "maxIterations": {
          "kind": "integer",
          "required": false,
          "min": 1,
          "max": 10000,
          "default": 100,
          "label": "Max iterations",
          "help": "More items than this fails the block."
        },
        "concurrency": {
          "kind": "integer",
          "required": false,
          "min": 1,
          "max": 16,
          "default": 1,
          "label": "Concurrency",
          "help": "Iterations running at once."
        }
      },
      "example": {
        "items": "input.items",
        "concurrency": 2
      }
    },
    "merge": {
      "label": "Merge",
      "description": "Joins branches.",
      "handles": {
        "inputs": [
          ""
        ],
        "outputs": [
          ""
        ]
      },
      "fields": {
        "join": {
          "kind": "enum",
          "required": false,
          "enum": [
            "all",
            "any",
            "all-non-skipped"
          ],
          "default": "all",
          "label": "Join",
          "help": "all: every input; any: the first to arrive; all-non-skipped: every input not skipped."
        }
      },
      "example": {
        "join": "any"
      }
    },
    "errorHandler": {
      "label": "Error handler",
      "description": "Runs when the execution fails, with {error: {message, blockId}}; the execution still fails.",
      "handles": {
        "inputs": [],
        "outputs": [
          ""
        ]
      },
      "fields": {},
      "example": {}
    },
    "split": {
      "label": "Split",
      "description": "Fans out; a handle named after a field of the upstream object gets that field.",
      "handles": {
        "inputs": [
          ""
        ],
        "outputs": [
          ""
        ]
      },
      "fields": {},
      "example": {}
    },
    "human": {
      "label": "Approval",
      "description": "Waits for a person to approve or reject, or for the timeout.",
      "handles": {
        "inputs": [
          ""
        ],
        "outputs": [
          "",
          "approved",
          "rejected"
        ]
      },
      "fields": {
        "message": {
          "kind": "template",
          "required": false,
          "label": "Message",
          "help": "What the approver is asked."
        },
        "onTimeout": {
          "kind": "enum",
          "required": false,
          "enum": [
            "approve",
            "reject"
          ],
          "default": "reject",
          "label": "On timeout",
          "help": "The decision when nobody decides in time."
        },
        "timeoutSeconds": {
          "kind": "number",
          "required": false,
          "exclusiveMin": 0,
          "max": 315360000,
          "default": 604800,
          "label": "Timeout (seconds)",
          "help": "How long to wait; at most 10 years."
        },
        "approvers": {
          "kind": "stringArray",
          "required": false,
          "label": "Approvers",
          "help": "User ids or emails; empty: anyone who may execute."
        },
        "notify": {
          "kind": "stringArray",
          "required": false,
          "label": "Notify",
          "help": "Emails asked by email (when email is configured)."
        }
      },
      "example": {
        "message": "Publish {{ upstream }}?",
        "timeoutSeconds": 86400,
        "onTimeout": "reject"
      }
    },
    "webhook": {
      "label": "Webhook",
      "description": "Sends an HTTP request; its output is the response.",
      "handles": {
        "inputs": [
          ""
        ],
        "outputs": [
          ""
        ]
      },
      "fields": {
        "url": {
          "kind": "template",
          "required": true,
          "label": "URL",
          "help": "Public addresses only."
        },
        "method": {
          "kind": "enum",
          "required": false,
          "enum": [
            "GET",
            "POST",
            "PUT",
            "PATCH",
            "DELETE"
          ],
          "default": "POST",
          "label": "Method",
          "help": "Or a template that renders one."
        },
        "headers": {
          "kind": "object",
          "required": false,
          "label": "Headers",
          "help": "Header name to template."
        },
        "body": {
          "kind": "template",
          "required": false,
          "label": "Body",
          "help": "Empty: the upstream value as JSON (none for GET)."
        }
      },
      "example": {
        "url": "https://example.com/hooks/{{ input.id }}",
        "method": "POST",
        "headers": {
          "authorization": "Bearer {{ input.token }}"
        }
      }
    },
    "delay": {
      "label": "Delay",
      "description": "Waits, then passes its input on.",
      "handles": {
        "inputs": [
          ""
        ],
        "outputs": [
          ""
        ]
      },
      "fields": {
        "seconds": {
          "kind": "number",
          "required": true,
          "min": 0,
          "max": 315360000,
          "label": "Seconds",
          "help": "How long to wait; at most 10 years."
        }
      },
      "example": {
        "seconds": 5
      }
    }
  }
}
