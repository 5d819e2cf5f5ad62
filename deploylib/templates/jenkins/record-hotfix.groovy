// The record of a hotfix made in place (triggered by `invoke hotfix`): one build per
// hotfix, so Jenkins' history shows every release that reached production, baked or not.
pipeline {
    agent none
    options { timestamps() }
    stages {
        stage('Record') {
            steps {
                script {
                    currentBuild.displayName = "${params.ENV} ${params.RELEASE}"
                    currentBuild.description = "in place, run ${params.RUN_ID}: ${params.HOSTS}"
                }
                echo "hotfix ${params.RELEASE} is live in place on ${params.ENV} (run ${params.RUN_ID}); hosts: ${params.HOSTS}"
            }
        }
    }
}
