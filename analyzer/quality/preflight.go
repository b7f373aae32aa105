package quality

import "context"

// GradeAnswer grades one answer to a pre-flight suite prompt, with the
// prompt's reference answer or rubric shown to the judge after the
// prompt when the suite has one. It is the judge call of Judge's rounds,
// without the tables: the pre-flight's answers are never captured.
func (j *Judge) GradeAnswer(ctx context.Context, prompt, reference, rubric, answer string) (float64, error) {
	if reference != "" {
		prompt += "\n>>>\n\nReference answer:\n<<<\n" + reference
	}
	if rubric != "" {
		prompt += "\n>>>\n\nRubric:\n<<<\n" + rubric
	}
	return j.grade(ctx, capture{prompt: prompt, completion: answer})
}
