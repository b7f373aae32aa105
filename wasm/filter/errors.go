package filter

import "encoding/json"

// APIError is an OpenAI-style error response.
type APIError struct {
	Status  int
	Message string
	Code    string
}

// The filter's local responses.
func errTooLarge() APIError {
	return APIError{Status: 413, Message: "request body is larger than the gateway accepts", Code: "request_too_large"}
}

func errBadBody(err error) APIError {
	return APIError{Status: 400, Message: err.Error(), Code: "invalid_request_body"}
}

func errUnknownModel(model string) APIError {
	return APIError{Status: 404, Message: "The model `" + model + "` does not exist", Code: "model_not_found"}
}

// Body returns the JSON body {"error":{"message","type","code"}}.
func (e APIError) Body() []byte {
	b, _ := json.Marshal(struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    string `json:"code"`
		} `json:"error"`
	}{Error: struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	}{e.Message, "invalid_request_error", e.Code}})
	return b
}
